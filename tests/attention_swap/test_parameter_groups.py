"""One mapping table puts every parameter of BART, mBART, Pegasus, Marian, T5 and BERT2BERT into exactly one group."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.models.parameter_groups import (
    PARAMETER_GROUPS,
    count_groups,
    format_group_table,
    freeze_groups,
    parameter_group,
)

SIZES = {
    "vocab_size": 64,
    "d_model": 16,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 64,
    "pad_token_id": 1,
    "decoder_start_token_id": 2,
}


def _by_group(model):
    groups = {g: 0 for g in PARAMETER_GROUPS}
    for name, param in model.named_parameters():
        groups[parameter_group(name)] += param.numel()
    return groups


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_has_every_trained_group(arch, tokenizer):
    model = tiny_model(arch, "sdpa", tokenizer)
    groups = _by_group(model)
    for group in ("decoder_self_attention", "decoder_cross_attention", "decoder_ffn", "encoder", "embeddings"):
        assert groups[group] > 0, (arch, group)
    assert groups["layer_norms"] > 0
    # two decoder layers of d=16: q, k, v, o are 16x16 (+ 16 biases except in T5, + T5's relative bias table)
    expected = {"bart": 2 * 4 * (256 + 16), "marian": 2 * 4 * (256 + 16), "bert2bert": 2 * 4 * (256 + 16)}
    if arch in expected:
        assert groups["decoder_self_attention"] == expected[arch]
    assert sum(c.total for c in count_groups(model)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["mbart", "pegasus"])
def test_mbart_and_pegasus_final_norms_are_layer_norms(family):
    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(family, **SIZES))
    assert parameter_group("model.decoder.layer_norm.weight") == "layer_norms"
    groups = _by_group(model)
    assert groups["decoder_self_attention"] == 2 * 4 * (256 + 16)
    assert groups["encoder"] > 0 and groups["decoder_ffn"] == 2 * (16 * 32 + 32 + 32 * 16 + 16)


def test_freezing_a_tied_group_freezes_the_shared_tensor_and_the_table_says_so(tokenizer):
    model = tiny_model("bart", "sdpa", tokenizer)
    freeze_groups(model, ["lm_head", "decoder_self_attention"])
    assert not model.model.shared.weight.requires_grad  # the LM head is the shared embedding table
    assert not model.model.decoder.layers[0].self_attn.q_proj.weight.requires_grad
    assert model.model.decoder.layers[0].encoder_attn.q_proj.weight.requires_grad
    counts = {c.group: c for c in count_groups(model, {"decoder_self_attention": "donor"})}
    embeddings = counts["embeddings"]  # position tables stay trainable, the shared token table is frozen
    assert embeddings.trainable == embeddings.total - model.model.shared.weight.numel() > 0
    assert "lm_head" in embeddings.tied_with
    assert counts["decoder_self_attention"].source == "donor"
    table = format_group_table(list(counts.values()))
    assert "decoder_self_attention" in table and "partial" in table and "frozen" in table and "donor" in table


def test_unknown_groups_and_unknown_families_are_named():
    with pytest.raises(ConfigError, match=r"freeze: unknown parameter group\(s\) \['decoder'\]"):
        freeze_groups(AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model("bart", **SIZES)), ["decoder"])
    with pytest.raises(ConfigError, match="matches no group"):
        parameter_group("frobnicator.weight")


def test_embedding_parts_freeze_one_side_or_a_shared_table(tokenizer):
    bert2bert = tiny_model("bert2bert", "sdpa", tokenizer)
    freeze_groups(bert2bert, ["encoder_embeddings"])
    assert not bert2bert.encoder.embeddings.word_embeddings.weight.requires_grad
    assert bert2bert.decoder.bert.embeddings.word_embeddings.weight.requires_grad
    counts = {c.group: c for c in count_groups(bert2bert)}
    assert 0 < counts["embeddings"].trainable < counts["embeddings"].total
    bart = tiny_model("bart", "sdpa", tokenizer)
    freeze_groups(bart, ["decoder_embeddings"])  # BART's shared table serves both sides
    assert not bart.model.shared.weight.requires_grad and bart.model.encoder.embed_positions.weight.requires_grad
