"""Knob B: mixing two decoders in probability and logit space, inside generate() and teacher forcing."""

from __future__ import annotations

import math

import pytest
import torch

from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.knobs import DecoderMixing, mix_logits

DECODER_IDS = torch.tensor([[101, 2000, 2001, 2002], [101, 2004, 2005, 2006], [101, 2008, 2009, 2010]])


def test_mix_logits_matches_the_definitions():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 50), torch.randn(4, 50)
    mixed = mix_logits(z1, z2, 0.3, "probability")
    expected = torch.log(0.7 * z1.softmax(-1) + 0.3 * z2.softmax(-1))
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(mix_logits(z1, z2, 0.3, "logit"), 0.7 * z1 + 0.3 * z2)
    torch.testing.assert_close(mix_logits(z1, z2, 0.0, "probability"), z1.log_softmax(-1))
    torch.testing.assert_close(mix_logits(z1, z2, 1.0, "probability"), z2.log_softmax(-1))
    extreme = mix_logits(torch.tensor([[1000.0, -1000.0]]), torch.tensor([[-1000.0, 1000.0]]), 0.5, "probability")
    torch.testing.assert_close(extreme, torch.full((1, 2), math.log(0.5)))


def _shared_encoder_pair(arch, tokenizer):
    """A primary and a secondary with the same encoder weights but different decoders (one encoder space)."""
    primary = tiny_model(arch, "sdpa", tokenizer, seed=0, init=0.3)
    secondary = tiny_model(arch, "sdpa", tokenizer, seed=1, init=0.3)
    secondary.get_encoder().load_state_dict(primary.get_encoder().state_dict())
    return primary, secondary


@pytest.mark.parametrize("space", ["probability", "logit"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_teacher_forced_logits_are_the_mixture(arch, space, tokenizer, batch):
    primary, secondary = _shared_encoder_pair(arch, tokenizer)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "decoder_input_ids": DECODER_IDS,
    }
    z1, z2 = primary(**inputs).logits, secondary(**inputs).logits
    with DecoderMixing(primary, secondary, 0.4, space):
        mixed = primary(**inputs).logits
    torch.testing.assert_close(mixed, mix_logits(z1, z2, 0.4, space), atol=1e-5, rtol=1e-5)
    assert len(primary._forward_hooks) == 0  # removed on exit


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lambda_one_generates_what_the_secondary_generates(arch, tokenizer, batch):
    primary, secondary = _shared_encoder_pair(arch, tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 8}
    mixing = DecoderMixing(primary, secondary, 1.0, "probability")
    for decoding in ({"do_sample": False}, {"num_beams": 3}):
        target = secondary.generate(**inputs, **decoding)
        assert not torch.equal(target, primary.generate(**inputs, **decoding))
        assert torch.equal(mixing.generate(**inputs, **decoding), target)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_beam_search_is_the_same_with_and_without_cache(arch, tokenizer, batch):
    """The secondary's cache rides in MixingCache, so beam reordering keeps both decoders aligned."""
    primary, secondary = _shared_encoder_pair(arch, tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 8}
    mixing = DecoderMixing(primary, secondary, 0.5, "logit")
    for decoding in ({"num_beams": 3, "num_return_sequences": 2}, {"do_sample": True, "top_k": 5}):
        torch.manual_seed(3)
        cached = mixing.generate(**inputs, **decoding)
        torch.manual_seed(3)
        uncached = mixing.generate(**inputs, use_cache=False, **decoding)
        assert torch.equal(cached, uncached)


def test_mixing_errors_are_clear(tokenizer, batch):
    primary = tiny_model("bart", "sdpa", tokenizer)
    with pytest.raises(ConfigError, match="lambda"):
        DecoderMixing(primary, primary, 1.5)
    with pytest.raises(ConfigError, match="secondary model"):
        DecoderMixing(primary, None, 0.5)
    with pytest.raises(ConfigError, match="space"):
        DecoderMixing(primary, primary, 0.5, "energy")
    wide = tiny_model("t5", "sdpa", tokenizer)
    wide.resize_token_embeddings(len(tokenizer) + 8)
    with pytest.raises(ConfigError, match="vocabularies"):
        DecoderMixing(primary, wide, 0.5)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "max_new_tokens": 2}
    mixing = DecoderMixing(primary, tiny_model("bart", "sdpa", tokenizer, seed=1), 0.5)
    with pytest.raises(ConfigError, match=r"=mixing.new_cache\(\)"):
        with mixing:
            primary.generate(**inputs)
    with pytest.raises(ConfigError, match="return_dict=True"):
        with mixing:
            primary(batch["input_ids"], decoder_input_ids=DECODER_IDS, return_dict=False)


def test_decoders_over_different_encoder_spaces_are_refused(tokenizer):
    from transformers import BartConfig, BartForConditionalGeneration

    primary = tiny_model("bart", "sdpa", tokenizer)
    config = primary.config.to_dict() | {"d_model": 24}
    wider = BartForConditionalGeneration(BartConfig(**config))
    with pytest.raises(ConfigError, match="same encoder space"):
        DecoderMixing(primary, wider, 0.5)


def test_reference_likelihood_under_mixing_is_minus_log_of_the_mixture(tokenizer, batch):
    from trustml.knobs import KnobGenerator, KnobSettings

    primary, secondary = _shared_encoder_pair("bart", tokenizer)
    labels = torch.tensor([[2000, 2001, 2002], [2003, 2004, -100], [2005, 2006, 2007]])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    z1, z2 = primary(**inputs, labels=labels).logits, secondary(**inputs, labels=labels).logits
    expected = -mix_logits(z1, z2, 0.5, "probability").gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    generator = KnobGenerator(primary, tokenizer, KnobSettings(mixing_weight=0.5), secondary=secondary)
    nll = generator.reference_token_nll(batch["input_ids"], batch["attention_mask"], labels)
    torch.testing.assert_close(nll, torch.where(labels == -100, 0.0, expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_secondary_decoder_projects_the_source_once_per_generate(arch, tokenizer, batch):
    """With a cache, each decoder computes its cross-attention keys and values over the source once (at the first
    step) and reads them from its cache afterwards; the secondary's cache rides in the primary's."""
    from trustml.knobs.sites import decoder_attention_sites

    primary, secondary = tiny_model(arch, "sdpa", tokenizer, seed=0), tiny_model(arch, "sdpa", tokenizer, seed=1)
    calls = {"primary": 0, "secondary": 0}
    for name, model in (("primary", primary), ("secondary", secondary)):
        cross = next(site for site in decoder_attention_sites(model) if site.kind == "cross").module
        key = next(m for n, m in cross.named_children() if n in ("k_proj", "k", "key"))
        key.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    DecoderMixing(primary, secondary, 0.5).generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        num_beams=4,
        min_new_tokens=12,
        max_new_tokens=12,
    )
    assert calls == {"primary": 1, "secondary": 1}
