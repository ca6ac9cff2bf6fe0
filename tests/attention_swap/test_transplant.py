"""Self-attention transplant: exact copies within a family, role mapping across families, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.models.attention_transplant import (
    load_donor,
    read_self_attention,
    reinitialize_self_attention,
    target_roles,
    transplant_self_attention,
)


def _logits(model, batch):
    with torch.no_grad():
        labels = batch["input_ids"][:, :6].contiguous()
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_transplanted_self_attention_reproduces_the_donor_model(arch, tokenizer, batch):
    """Model B = A with a re-drawn self-attention; giving B A's self-attention back gives A's outputs exactly."""
    donor = tiny_model(arch, "eager", tokenizer, seed=0)
    model = copy.deepcopy(donor)
    torch.manual_seed(5)
    assert reinitialize_self_attention(model) > 0
    assert not torch.allclose(_logits(model, batch), _logits(donor, batch))
    written = transplant_self_attention(model, read_self_attention(donor, "donor"), None)
    assert written == sum(p.numel() for roles in target_roles(model) for p in roles.values())
    torch.testing.assert_close(_logits(model, batch), _logits(donor, batch))


def test_a_gpt2_donor_is_split_into_query_key_value_and_transposed(tokenizer):
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=64, n_embd=16, n_layer=2, n_head=2))
    model = tiny_model("bart", "eager", tokenizer)
    transplant_self_attention(model, read_self_attention(gpt2, "gpt2"), None)
    layer, block = model.model.decoder.layers[1].self_attn, gpt2.transformer.h[1].attn
    fused_w, fused_b = block.c_attn.weight, block.c_attn.bias  # Conv1D: y = x W + b, W [16, 48]
    torch.testing.assert_close(layer.k_proj.weight, fused_w[:, 16:32].t())
    torch.testing.assert_close(layer.v_proj.bias, fused_b[32:])
    torch.testing.assert_close(layer.out_proj.weight, block.c_proj.weight.t())


def test_a_donor_without_biases_zeroes_the_models_biases(tokenizer):
    llama = AutoModel.from_config(
        AutoConfig.for_model(
            "llama", vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    model = tiny_model("bart", "eager", tokenizer)
    transplant_self_attention(model, read_self_attention(llama, "llama"), [1, 0])
    attention = model.model.decoder.layers[0].self_attn
    torch.testing.assert_close(attention.q_proj.weight, llama.layers[1].self_attn.q_proj.weight)
    assert attention.q_proj.bias.abs().sum() == 0 and attention.out_proj.bias.abs().sum() == 0


def test_an_encoder_donor_feeds_a_bert2bert_decoder_from_a_saved_folder(tokenizer, tmp_path):
    encoder = AutoModel.from_config(
        AutoConfig.for_model(
            "bert", vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
        )
    )
    encoder.save_pretrained(tmp_path / "encoder")
    model = tiny_model("bert2bert", "eager", tokenizer)
    transplant_self_attention(model, load_donor(str(tmp_path / "encoder")), [2, 0])
    decoder = model.decoder.bert.encoder.layer
    torch.testing.assert_close(
        decoder[0].attention.self.value.weight, encoder.encoder.layer[2].attention.self.value.weight
    )
    torch.testing.assert_close(
        decoder[1].attention.output.dense.bias, encoder.encoder.layer[0].attention.output.dense.bias
    )


def _donor(tokenizer, **sizes):
    return read_self_attention(tiny_model("bart", "eager", tokenizer, **sizes), "the donor")


def test_misfits_are_refused_without_changing_the_model(tokenizer):
    model = tiny_model("bart", "eager", tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"3 self-attention layers and the decoder 2; give method.layer_map"):
        transplant_self_attention(model, _donor(tokenizer, layers=3), None)
    with pytest.raises(ConfigError, match=r"4 attention heads and the decoder 2"):
        transplant_self_attention(model, _donor(tokenizer, heads=4), None)
    with pytest.raises(ConfigError, match=r"names donor layer\(s\) \[5\]"):
        transplant_self_attention(model, _donor(tokenizer, layers=3), [0, 5])
    with pytest.raises(ConfigError, match=r"has 1 entries; the decoder has 2 layers"):
        transplant_self_attention(model, _donor(tokenizer), [0])
    wide = AutoModel.from_config(
        AutoConfig.for_model(
            "bert", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(ConfigError, match=r"has shape \(32, 32\), decoder layer 0 needs \(16, 16\)"):
        transplant_self_attention(model, read_self_attention(wide, "wide"), None)
    t5 = tiny_model("t5", "eager", tokenizer)
    with pytest.raises(ConfigError, match="cannot hold"):  # BART's biases cannot go into bias-free T5
        transplant_self_attention(t5, _donor(tokenizer), None)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ConfigError, match="neither a trustml run directory"):
        load_donor(str(tmp_path_missing := "/nonexistent/donor"))
    assert tmp_path_missing
