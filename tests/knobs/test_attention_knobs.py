"""Knobs A and D change attention exactly as a' = a * b / sum(a * b), on the chosen layers, heads and steps."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.knobs import AttentionBiasing, CrossAttentionBias, SelfAttentionBias, StepSchedule
from trustml.knobs.attention_bias import decoder_segment_ids

DECODER_IDS = torch.tensor(
    [[101, 2000, 2001, 2002, 2003], [101, 2004, 2005, 2006, 2007], [101, 2008, 2009, 2010, 2011]]
)


def _forward(model, batch, **knobs):
    kwargs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "decoder_input_ids": DECODER_IDS,
        "output_attentions": True,
    }
    if not knobs:
        return model(**kwargs)
    with AttentionBiasing(model, **knobs):
        return model(**kwargs)


def _exact_model(arch, tokenizer):
    """Float64 eager model, so the renormalization formula can be checked to 1e-7 (the bias itself is float32)."""
    return tiny_model(arch, "eager", tokenizer, init=0.3).double()


def _renormalized(attention, bias):
    weighted = attention * bias.to(attention)
    return weighted / weighted.sum(-1, keepdim=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cross_attention_bias_follows_the_formula_on_chosen_layer_and_head(arch, tokenizer, builder, batch):
    model = _exact_model(arch, tokenizer)
    knob = CrossAttentionBias({"knowledge": 4.0, "history": 0.5}, layers=[1], heads=[0])
    vanilla = _forward(model, batch)
    biased = _forward(
        model, batch, cross_attention=knob, segment_ids=batch["segment_ids"], vocabulary=builder.vocabulary
    )
    segments = batch["segment_ids"]
    b = torch.where(segments == 1, 4.0, torch.where(segments == 2, 0.5, 1.0))[:, None, :]
    before, after = vanilla.cross_attentions, biased.cross_attentions
    torch.testing.assert_close(after[1][:, 0], _renormalized(before[1][:, 0], b), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(after[1][:, 1], before[1][:, 1], atol=0, rtol=0)  # head 1 untouched
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)  # layer 0 untouched
    knowledge = (segments == 1)[:, None, :].double()
    mass_before, mass_after = (before[1][:, 0] * knowledge).sum(-1), (after[1][:, 0] * knowledge).sum(-1)
    undecided = (mass_before > 1e-9) & (mass_before < 1 - 1e-9)
    assert undecided.any()
    assert torch.all(mass_after[undecided] > mass_before[undecided])
    assert torch.all(mass_after >= mass_before - 1e-12)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_schedule_scales_the_bias_per_decoding_step(arch, tokenizer, builder, batch):
    model = _exact_model(arch, tokenizer)
    schedule = StepSchedule("linear_decay", start=1, steps=2)  # s = 0, 1, 0.5, 0, 0 at positions 0..4
    knob = CrossAttentionBias({"knowledge": 9.0}, layers=[0], schedule=schedule)
    vanilla = _forward(model, batch)
    biased = _forward(
        model, batch, cross_attention=knob, segment_ids=batch["segment_ids"], vocabulary=builder.vocabulary
    )
    strengths = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.0])
    b = torch.where(batch["segment_ids"] == 1, 9.0, 1.0)[:, None, None, :] ** strengths[None, None, :, None]
    expected = _renormalized(vanilla.cross_attentions[0], b)
    torch.testing.assert_close(biased.cross_attentions[0], expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_self_attention_bias_follows_the_formula(arch, tokenizer, batch):
    model = _exact_model(arch, tokenizer)
    knob = SelfAttentionBias({"start": 3.0, "current": 0.25}, layers=[1], heads=[1])
    vanilla, biased = _forward(model, batch), _forward(model, batch, self_attention=knob)
    segments = decoder_segment_ids(torch.arange(5), 5, start_length=1)
    b = torch.tensor([3.0, 1.0, 0.25])[segments]
    before, after = vanilla.decoder_attentions, biased.decoder_attentions
    torch.testing.assert_close(after[1][:, 1], _renormalized(before[1][:, 1], b), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(after[1][:, 0], before[1][:, 0], atol=0, rtol=0)
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    assert torch.all(after[1].triu(diagonal=1) == 0)  # still causal


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sdpa_and_eager_agree_under_knobs(arch, tokenizer, builder, batch):
    """SDPA gets boolean or no masks; the knob's additive mask (causal included) must match eager exactly."""
    knobs = {
        "cross_attention": CrossAttentionBias({"knowledge": 5.0, "other": 0.2}),
        "self_attention": SelfAttentionBias({"previous": 2.0}, schedule=StepSchedule("exponential_decay", rate=0.5)),
        "segment_ids": batch["segment_ids"],
        "vocabulary": builder.vocabulary,
    }
    eager = _forward(tiny_model(arch, "eager", tokenizer, init=0.3), batch, **knobs).logits
    model = tiny_model(arch, "sdpa", tokenizer, init=0.3)
    sdpa = _forward(model, batch, **knobs)
    vanilla = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=DECODER_IDS)
    torch.testing.assert_close(sdpa.logits, eager, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(sdpa.logits, vanilla.logits, atol=1e-4)


@pytest.mark.parametrize("decoding", [{"num_beams": 3}, {"do_sample": False}])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_knobs_give_the_same_tokens_with_and_without_kv_cache(arch, decoding, tokenizer, builder, batch):
    model = tiny_model(arch, "sdpa", tokenizer, init=0.3)
    knobs = AttentionBiasing(
        model,
        cross_attention=CrossAttentionBias({"knowledge": 20.0}, schedule=StepSchedule("window", start=1, steps=3)),
        self_attention=SelfAttentionBias({"current": 3.0}),
        segment_ids=batch["segment_ids"],
        vocabulary=builder.vocabulary,
    )
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 8}
    with knobs:
        cached = model.generate(**inputs, **decoding)
        uncached = model.generate(**inputs, use_cache=False, **decoding)
    assert torch.equal(cached, uncached)


def test_knob_errors_are_clear(tokenizer, builder, batch):
    model = tiny_model("bart", "sdpa", tokenizer)
    ids, vocab = batch["segment_ids"], builder.vocabulary
    cases = [
        (lambda: CrossAttentionBias({"knowledge": 0.0}), "finite number > 0"),
        (lambda: CrossAttentionBias({"knowledge": float("inf")}), "finite number > 0"),
        (lambda: SelfAttentionBias({"future": 2.0}), "unknown"),
        (lambda: StepSchedule("cosine"), "unknown"),
        (lambda: StepSchedule("exponential_decay", rate=1.5), "rate"),
        (lambda: AttentionBiasing(model, cross_attention=CrossAttentionBias({"knowledge": 2.0})), "segment_ids"),
        (
            lambda: AttentionBiasing(
                model, cross_attention=CrossAttentionBias({"facts": 2.0}), segment_ids=ids, vocabulary=vocab
            ),
            "known segments",
        ),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message):
            make()
    for knob, message in [
        (CrossAttentionBias({"knowledge": 2.0}, layers=[5]), "layers"),
        (CrossAttentionBias({"knowledge": 2.0}, heads=[2]), "heads"),
    ]:
        with pytest.raises(ConfigError, match=message):
            AttentionBiasing(model, cross_attention=knob, segment_ids=ids, vocabulary=vocab).__enter__()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0  # a failed install leaves nothing behind


def test_mismatched_inputs_are_reported(tokenizer, builder, batch):
    model = tiny_model("bart", "eager", tokenizer)
    knob = CrossAttentionBias({"knowledge": 2.0})
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 2}
    with pytest.raises(ConfigError, match="segment_ids cover 2 inputs"):
        with AttentionBiasing(
            model, cross_attention=knob, segment_ids=batch["segment_ids"][:2], vocabulary=builder.vocabulary
        ):
            model.generate(**inputs)
    with pytest.raises(ConfigError, match="positions but the encoder states"):
        with AttentionBiasing(
            model, cross_attention=knob, segment_ids=batch["segment_ids"][:, :-1], vocabulary=builder.vocabulary
        ):
            model.generate(**inputs)


def test_unsupported_models_are_reported(tokenizer):
    encoder_only = BertModel(
        BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(ConfigError, match="not a Hugging Face encoder-decoder"):
        AttentionBiasing(encoder_only, self_attention=SelfAttentionBias({"current": 2.0})).__enter__()
    model = tiny_model("bart", "eager", tokenizer)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="attn_implementation='sdpa'"):
        AttentionBiasing(model, self_attention=SelfAttentionBias({"current": 2.0})).__enter__()
