"""Knobs at neutral values reproduce vanilla generate() token for token, on every architecture and attention."""

from __future__ import annotations

import pytest
import torch

from tests.knobs.conftest import ARCHITECTURES, IMPLEMENTATIONS, tiny_model
from trustml.knobs import (
    AttentionBiasing,
    CrossAttentionBias,
    KnobGenerator,
    KnobSettings,
    SelfAttentionBias,
    augmented_encoder_inputs,
)

DECODING = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 20, "temperature": 0.9},
    "beam": {"num_beams": 3, "num_return_sequences": 2},
}


def _generate(fn, decoding: str):
    torch.manual_seed(7)
    return fn(max_new_tokens=8, **DECODING[decoding])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_neutral_knobs_reproduce_generate(arch, implementation, tokenizer, builder, batch):
    model = tiny_model(arch, implementation, tokenizer, init=0.3)
    secondary = tiny_model(arch, implementation, tokenizer, seed=1, init=0.3)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    neutral = KnobSettings(
        cross_attention=CrossAttentionBias({"knowledge": 1.0, "history": 1.0}),
        self_attention=SelfAttentionBias({"current": 1.0}),
        mixing_weight=0.0,
    )
    generator = KnobGenerator(model, tokenizer, neutral, vocabulary=builder.vocabulary, secondary=secondary)
    for decoding in DECODING:
        vanilla = _generate(lambda **kw: model.generate(**inputs, **kw), decoding)
        knobbed = _generate(lambda **kw: generator.generate(**inputs, segment_ids=batch["segment_ids"], **kw), decoding)
        assert torch.equal(vanilla, knobbed), decoding


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_uniform_bias_runs_the_hooks_and_changes_nothing(arch, implementation, tokenizer, builder, batch):
    """The same b on every encoder position renormalizes to the same attention: the hook path is exact."""
    model = tiny_model(arch, implementation, tokenizer, init=0.3)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    uniform = CrossAttentionBias({name: 2.0 for name in builder.vocabulary.all_names})
    biasing = AttentionBiasing(
        model, cross_attention=uniform, segment_ids=batch["segment_ids"], vocabulary=builder.vocabulary
    )
    for decoding in ("greedy", "beam"):
        vanilla = _generate(lambda **kw: model.generate(**inputs, **kw), decoding)
        with biasing:
            hooked = sum(len(m._forward_pre_hooks) for m in model.modules())
            knobbed = _generate(lambda **kw: model.generate(**inputs, **kw), decoding)
        assert hooked > 0
        assert torch.equal(vanilla, knobbed), decoding
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_empty_context_code_reproduces_generate(arch, tokenizer, batch):
    """Generating from precomputed (augmented) encoder outputs with nothing appended is vanilla generate()."""
    model = tiny_model(arch, "sdpa", tokenizer, init=0.3)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    width = model.get_encoder().config.hidden_size
    augmented, _ = augmented_encoder_inputs(model, **inputs, code=torch.zeros(0, width))
    for decoding in ("greedy", "beam"):
        vanilla = _generate(lambda **kw: model.generate(**inputs, **kw), decoding)
        assert torch.equal(vanilla, _generate(lambda **kw: model.generate(**augmented, **kw), decoding))


def test_neutral_reference_likelihood_is_the_model_loss(tokenizer, batch):
    model = tiny_model("bart", "sdpa", tokenizer, init=0.3)
    labels = torch.tensor([[2000, 2001, 2002, -100], [2003, 2004, -100, -100], [2005, 2006, 2007, 2008]])
    generator = KnobGenerator(model, tokenizer, KnobSettings())
    nll = generator.reference_token_nll(batch["input_ids"], batch["attention_mask"], labels)
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(nll.sum() / (labels != -100).sum(), loss, atol=1e-5)
    assert torch.all(nll[labels == -100] == 0)
