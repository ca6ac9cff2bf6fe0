"""Knob C: pooling control phrases into a context code and appending it to the encoder states."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.knobs import (
    AttentionBiasing,
    CrossAttentionBias,
    KnobGenerator,
    KnobSettings,
    append_context,
    augmented_encoder_inputs,
    encode_control_phrases,
)
from trustml.knobs.context_augmentation import pool_phrase_states

QUESTIONS = ["what do you think?", "do you like it?", "have you ever seen one?"]


def test_pooling_modes():
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    positionwise = pool_phrase_states(states, mask, "positionwise")
    torch.testing.assert_close(
        positionwise, torch.stack([(states[0, 0] + states[1, 0]) / 2, (states[0, 1] + states[1, 1]) / 2, states[1, 2]])
    )
    torch.testing.assert_close(pool_phrase_states(states, mask, "mean"), states[mask.bool()].mean(0, keepdim=True))
    per_phrase = pool_phrase_states(states, mask, "per_phrase")
    torch.testing.assert_close(per_phrase, torch.stack([states[0, :2].mean(0), states[1].mean(0)]))
    with pytest.raises(ConfigError, match="pooling"):
        pool_phrase_states(states, mask, "max")


def test_append_context_extends_states_mask_and_segments():
    states, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    code, segments = torch.randn(3, 8), torch.tensor([[0, 1, 2, 0], [0, 1, 1, 2]])
    new_states, new_mask, new_segments = append_context(states, mask, code, segments, control_segment=5)
    assert new_states.shape == (2, 7, 8)
    torch.testing.assert_close(new_states[:, 4:], code.expand(2, 3, 8))
    torch.testing.assert_close(new_states[:, :4], states)
    assert new_mask.tolist() == [[1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]
    assert new_segments[:, 4:].eq(5).all() and torch.equal(new_segments[:, :4], segments)
    with pytest.raises(ConfigError, match="width"):
        append_context(states, mask, torch.randn(3, 6))
    with pytest.raises(ConfigError, match="control_segment"):
        append_context(states, mask, code, segments)


def pooled_by_hand(model, tokenizer, phrases: list[str], pooling: str) -> torch.Tensor:
    """The context code computed here, loop by loop, from the model's encoder states of the padded phrases."""
    enc = tokenizer(phrases, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        states = model.get_encoder()(**enc).last_hidden_state
    real = enc["attention_mask"].bool()
    if pooling == "mean":
        return states[real].mean(0, keepdim=True)
    if pooling == "per_phrase":
        return torch.stack([states[p, real[p]].mean(0) for p in range(len(phrases))])
    return torch.stack([states[real[:, pos], pos].mean(0) for pos in range(states.shape[1])])


@pytest.mark.parametrize("pooling", ["positionwise", "mean", "per_phrase"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generation_sees_the_inputs_states_followed_by_the_pooled_control_phrases(
    arch, pooling, tokenizer, builder, batch, monkeypatch
):
    model = tiny_model(arch, "sdpa", tokenizer, init=0.3)
    code = encode_control_phrases(model, tokenizer, QUESTIONS, pooling)
    torch.testing.assert_close(code, pooled_by_hand(model, tokenizer, QUESTIONS, pooling))
    bias = CrossAttentionBias({"control": 5.0})
    settings = KnobSettings(control_phrases=QUESTIONS, context_pooling=pooling, cross_attention=bias)
    generator = KnobGenerator(model, tokenizer, settings, vocabulary=builder.vocabulary)
    torch.testing.assert_close(generator.context_code, code)

    seen: dict = {}
    original_generate = model.generate

    def recording_generate(**kwargs):
        seen.update(kwargs)  # copies below: generate() expands the encoder outputs for the beams in place
        seen.update(states=kwargs["encoder_outputs"].last_hidden_state.clone(), mask=kwargs["attention_mask"].clone())
        return original_generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    ids, mask, segment_ids = batch["input_ids"], batch["attention_mask"], batch["segment_ids"]
    out = generator.generate(ids, mask, segment_ids, max_new_tokens=5, num_beams=2)

    # the decoder attends over [h_1..h_S; c]: the input's own encoder states, then the code, unmasked
    with torch.no_grad():
        own = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    states, length = seen["states"], ids.shape[1]
    assert states.shape == (ids.shape[0], length + code.shape[0], code.shape[1]) and "input_ids" not in seen
    torch.testing.assert_close(states[:, :length], own)
    torch.testing.assert_close(states[:, length:], code.expand(ids.shape[0], -1, -1))
    assert torch.equal(seen["mask"][:, :length], mask) and seen["mask"][:, length:].eq(1).all()

    # ... and generation is exactly that of the plain model on those states, the bias on the appended positions
    control = builder.vocabulary.id_of("control")
    segments = torch.cat([segment_ids, segment_ids.new_full((ids.shape[0], code.shape[0]), control)], dim=1)
    monkeypatch.undo()
    with AttentionBiasing(model, cross_attention=bias, segment_ids=segments, vocabulary=builder.vocabulary):
        expected = model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=torch.cat([own, code.expand(ids.shape[0], -1, -1)], 1)),
            attention_mask=seen["mask"],
            max_new_tokens=5,
            num_beams=2,
        )
    assert torch.equal(out, expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_context_code_changes_the_decoders_predictions(arch, tokenizer, builder, batch):
    model = tiny_model(arch, "sdpa", tokenizer, init=0.3)
    labels = torch.tensor([[2000, 2001, 2002, tokenizer.sep_token_id]] * batch["input_ids"].shape[0])
    args = (batch["input_ids"], batch["attention_mask"], labels, batch["segment_ids"])

    def nll(settings: KnobSettings) -> torch.Tensor:
        return KnobGenerator(model, tokenizer, settings, vocabulary=builder.vocabulary).reference_token_nll(*args)

    plain = nll(KnobSettings())
    augmented = nll(KnobSettings(control_phrases=QUESTIONS))
    biased = nll(KnobSettings(control_phrases=QUESTIONS, cross_attention=CrossAttentionBias({"control": 5.0})))
    # every reference token's likelihood moves once the decoder can attend to the code, more when it is biased to
    assert torch.all((augmented - plain).abs() > 1e-6)
    assert (biased - plain).abs().mean() > (augmented - plain).abs().mean() > 0
    # a control bias without a context code has no control positions to act on: the plain model's result
    torch.testing.assert_close(nll(KnobSettings(cross_attention=CrossAttentionBias({"control": 5.0}))), plain)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_control_bias_raises_attention_on_the_context_code(arch, tokenizer, builder, batch):
    model = tiny_model(arch, "eager", tokenizer, init=0.3).double()
    code = encode_control_phrases(model, tokenizer, QUESTIONS)
    control = builder.vocabulary.id_of("control")
    inputs, segments = augmented_encoder_inputs(
        model, batch["input_ids"], batch["attention_mask"], code, batch["segment_ids"], control
    )
    decoder_ids = torch.tensor([[101, 2000, 2001]] * 3)
    vanilla = model(**inputs, decoder_input_ids=decoder_ids, output_attentions=True).cross_attentions
    with AttentionBiasing(
        model,
        cross_attention=CrossAttentionBias({"control": 6.0}, layers=[0]),
        segment_ids=segments,
        vocabulary=builder.vocabulary,
    ):
        biased = model(**inputs, decoder_input_ids=decoder_ids, output_attentions=True).cross_attentions
    on_code = (segments == control)[:, None, None, :].double()
    before, after = (vanilla[0] * on_code).sum(-1), (biased[0] * on_code).sum(-1)
    weighted = vanilla[0] * torch.where(on_code.bool(), 6.0, 1.0)
    torch.testing.assert_close(biased[0], weighted / weighted.sum(-1, keepdim=True), atol=1e-7, rtol=1e-6)
    assert torch.all(after >= before - 1e-12) and torch.any(after > before)


def test_context_errors_are_clear(tokenizer, batch):
    model = tiny_model("bart", "sdpa", tokenizer)
    with pytest.raises(ConfigError, match="at least one control phrase"):
        encode_control_phrases(model, tokenizer, [])
    generator = KnobGenerator(model, tokenizer, KnobSettings(control_phrases=QUESTIONS))
    with pytest.raises(ConfigError, match="SegmentVocabulary"):
        generator.generate(batch["input_ids"], batch["attention_mask"], batch["segment_ids"], max_new_tokens=2)


def test_knob_settings_are_a_structured_config_with_checked_values():
    from omegaconf import OmegaConf

    from trustml.knobs import SelfAttentionBias, StepSchedule

    base = OmegaConf.structured(KnobSettings)
    override = {
        "cross_attention": {"values": {"knowledge": 3}, "layers": [0], "schedule": {"kind": "window"}},
        "mixing_weight": 0.25,
        "control_phrases": ["why?"],
    }
    settings = OmegaConf.to_object(OmegaConf.merge(base, override))
    assert settings == KnobSettings(
        cross_attention=CrossAttentionBias({"knowledge": 3.0}, layers=[0], schedule=StepSchedule("window")),
        self_attention=SelfAttentionBias(),
        mixing_weight=0.25,
        control_phrases=["why?"],
    )
    for bad, message in [
        ({"mixing_space": "energy"}, "mixing_space"),
        ({"mixing_weight": -0.1}, "mixing_weight"),
        ({"context_pooling": "max"}, "context_pooling"),
    ]:
        with pytest.raises(ConfigError, match=message):
            KnobSettings(**bad)
