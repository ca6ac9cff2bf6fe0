"""One entry point for generating (and scoring references) with knobs A-D on any encoder-decoder
(:class:`KnobGenerator`) or decoder-only language model (:class:`CausalKnobGenerator`).

:class:`KnobSettings` holds every knob at neutral defaults (b = 1, lambda = 0, no control phrases); with those,
``generate`` is exactly ``model.generate``. :func:`knob_generator` picks the class for a model.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.knobs.attention_knobs import AttentionBiasing, CrossAttentionBias, SelfAttentionBias
from trustml.knobs.cache_argument import cache_given
from trustml.knobs.causal_knobs import (
    CausalDecoderMixing,
    PromptAttentionBias,
    PromptAttentionBiasing,
    prepend_soft_prompt,
    soft_prompt_code,
)
from trustml.knobs.context_augmentation import POOLINGS, augmented_encoder_inputs, encode_control_phrases
from trustml.knobs.decoder_mixing import MIXING_SPACES, DecoderMixing
from trustml.knobs.sites import is_encoder_decoder
from trustml.models.segments import CONTROL_SEGMENT, SegmentVocabulary


@dataclass
class KnobSettings:
    """Values of the four knobs; the defaults are neutral.

    ``cross_attention`` (A on an encoder-decoder: cross-attention over encoder segments), ``prompt_attention`` (A on
    a decoder-only model: self-attention to prompt segments, :mod:`~trustml.knobs.causal_knobs`; PASTA head
    profiling: :mod:`~trustml.knobs.pasta`),
    ``mixing_weight``/``mixing_space`` (B, needs a secondary model), ``control_phrases``/``context_pooling`` (C;
    bias the appended code with the A knob's ``values["control"]``), ``self_attention`` (D). Plain field types, so
    the class doubles as a Hydra structured config.
    """

    cross_attention: CrossAttentionBias = field(default_factory=CrossAttentionBias)
    prompt_attention: PromptAttentionBias = field(default_factory=PromptAttentionBias)
    self_attention: SelfAttentionBias = field(default_factory=SelfAttentionBias)
    mixing_weight: float = 0.0
    mixing_space: str = "probability"
    control_phrases: list[str] = field(default_factory=list)
    context_pooling: str = "positionwise"

    def __post_init__(self) -> None:
        if self.mixing_space not in MIXING_SPACES:
            raise ConfigError(f"mixing_space={self.mixing_space!r} is unknown; use one of {list(MIXING_SPACES)}")
        if not 0.0 <= self.mixing_weight <= 1.0:
            raise ConfigError(f"mixing_weight={self.mixing_weight} must lie in [0, 1] (0 = primary only)")
        if self.context_pooling not in POOLINGS:
            raise ConfigError(f"context_pooling={self.context_pooling!r} is unknown; use one of {list(POOLINGS)}")


class KnobGenerator:
    """Generates with :class:`KnobSettings` on ``model`` (and ``secondary`` for decoder mixing).

    ``vocabulary`` names the segments of the ``segment_ids`` given with each batch (needed by knob A and to mark
    knob C's appended code).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        settings: KnobSettings,
        vocabulary: SegmentVocabulary | None = None,
        secondary: nn.Module | None = None,
    ) -> None:
        if not settings.prompt_attention.is_neutral:
            raise ConfigError(
                "knobs.prompt_attention biases the prompt of a decoder-only model; an encoder-decoder reads its "
                "segments through cross-attention: use knobs.cross_attention"
            )
        self.model, self.tokenizer, self.settings, self.vocabulary = model, tokenizer, settings, vocabulary
        self.mixing = DecoderMixing(model, secondary, settings.mixing_weight, settings.mixing_space)
        self.context_code: Tensor | None = None
        if settings.control_phrases:
            self.context_code = encode_control_phrases(
                model, tokenizer, settings.control_phrases, settings.context_pooling
            )

    def _inputs(
        self, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor | None
    ) -> tuple[dict[str, Any], Tensor | None]:
        if self.context_code is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask}, segment_ids
        control = None
        if segment_ids is not None:
            if self.vocabulary is None:
                raise ConfigError("segment_ids need the SegmentVocabulary that names them (KnobGenerator vocabulary=)")
            control = self.vocabulary.id_of(CONTROL_SEGMENT)
        return augmented_encoder_inputs(self.model, input_ids, attention_mask, self.context_code, segment_ids, control)

    def _knobs(self, stack: ExitStack, segment_ids: Tensor | None) -> None:
        stack.enter_context(
            AttentionBiasing(
                self.model,
                cross_attention=self.settings.cross_attention,
                self_attention=self.settings.self_attention,
                segment_ids=segment_ids,
                vocabulary=self.vocabulary,
            )
        )
        stack.enter_context(self.mixing)

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor | None = None, **generate_kwargs: Any
    ) -> Tensor:
        """``model.generate(...)`` under the knobs; ``generate_kwargs`` as for ``generate()`` (beams, sampling...)."""
        inputs, segments = self._inputs(input_ids, attention_mask, segment_ids)
        with ExitStack() as stack:
            self._knobs(stack, segments)
            if self.mixing.active and generate_kwargs.get("use_cache", True) and not cache_given(generate_kwargs):
                generate_kwargs[self.mixing.cache_keyword] = self.mixing.new_cache()
            return self.model.generate(**inputs, **generate_kwargs)

    @torch.no_grad()
    def reference_token_nll(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, segment_ids: Tensor | None = None
    ) -> Tensor:
        """Per-token negative log-likelihood of reference ``labels`` (``[B, T]``, ``-100`` = ignored, 0 there)
        under the model with the knobs (teacher forcing)."""
        inputs, segments = self._inputs(input_ids, attention_mask, segment_ids)
        with ExitStack() as stack:
            self._knobs(stack, segments)
            logits = self.model(**inputs, labels=labels, return_dict=True).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        return torch.where(labels == -100, 0.0, nll)


class CausalKnobGenerator:
    """Generates with :class:`KnobSettings` on a decoder-only ``model`` (:mod:`~trustml.knobs.causal_knobs`):
    ``prompt_attention`` (A), ``mixing_weight`` with ``secondary`` (B), ``control_phrases`` (C, a soft prompt) and
    ``self_attention`` (D). Prompts are left-padded with ``segment_ids`` named by ``vocabulary``; :meth:`generate`
    returns the generated tokens only (``[rows, new tokens]``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        settings: KnobSettings,
        vocabulary: SegmentVocabulary | None = None,
        secondary: nn.Module | None = None,
    ) -> None:
        if not settings.cross_attention.is_neutral:
            raise ConfigError(
                f"knobs.cross_attention biases cross-attention, which the decoder-only {type(model).__name__} does "
                "not have; use knobs.prompt_attention to bias its prompt segments"
            )
        if settings.control_phrases and settings.mixing_weight > 0.0:
            raise ConfigError(
                "on a decoder-only model knob C (a soft prompt of input embeddings) and knob B (mixing with a second "
                "model that reads the tokens) do not combine; use one of knobs.control_phrases and knobs.mixing_weight"
            )
        self.model, self.tokenizer, self.settings, self.vocabulary = model, tokenizer, settings, vocabulary
        self.mixing = CausalDecoderMixing(model, secondary, settings.mixing_weight, settings.mixing_space)
        self.soft_prompt: Tensor | None = None
        if settings.control_phrases:
            self.soft_prompt = soft_prompt_code(model, tokenizer, settings.control_phrases, settings.context_pooling)

    def _inputs(self, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor | None):
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        if self.soft_prompt is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask}, segment_ids
        if self.vocabulary is None:
            raise ConfigError("a soft prompt needs the SegmentVocabulary that names the control segment")
        control = self.vocabulary.id_of(CONTROL_SEGMENT)
        return prepend_soft_prompt(self.model, input_ids, attention_mask, segment_ids, self.soft_prompt, control)

    def _knobs(self, stack: ExitStack, segment_ids: Tensor) -> None:
        stack.enter_context(
            PromptAttentionBiasing(
                self.model,
                prompt=self.settings.prompt_attention,
                self_attention=self.settings.self_attention,
                segment_ids=segment_ids,
                vocabulary=self.vocabulary,
            )
        )
        stack.enter_context(self.mixing)

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor | None = None, **generate_kwargs: Any
    ) -> Tensor:
        """The tokens ``model.generate`` appends to the prompts, under the knobs."""
        inputs, segments = self._inputs(input_ids, attention_mask, segment_ids)
        with ExitStack() as stack:
            self._knobs(stack, segments)
            if self.mixing.active and generate_kwargs.get("use_cache", True) and not cache_given(generate_kwargs):
                generate_kwargs[self.mixing.cache_keyword] = self.mixing.new_cache()
            out = self.model.generate(**inputs, **generate_kwargs)
        return out if "input_ids" not in inputs else out[:, input_ids.shape[1] :]

    @torch.no_grad()
    def reference_token_nll(
        self, input_ids: Tensor, attention_mask: Tensor, targets: Tensor, segment_ids: Tensor | None = None
    ) -> Tensor:
        """Per-token negative log-likelihood ``[B, T]`` of ``targets`` (``-100`` = padding, 0 there) continuing the
        prompts, under the knobs (teacher forcing; positions counted as ``generate()`` counts them)."""
        inputs, segments = self._inputs(input_ids, attention_mask, segment_ids)
        mask = torch.cat([inputs["attention_mask"], (targets != -100).long()], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        tokens = targets.clamp(min=0)
        if "inputs_embeds" in inputs:
            embeds = torch.cat([inputs["inputs_embeds"], self.model.get_input_embeddings()(tokens)], dim=1)
            full = {"inputs_embeds": embeds}
        else:
            full = {"input_ids": torch.cat([input_ids, tokens], dim=1)}
        with ExitStack() as stack:
            self._knobs(stack, segments)
            logits = self.model(**full, attention_mask=mask, position_ids=positions, return_dict=True).logits.float()
        prompt = mask.shape[1] - targets.shape[1]
        predicted = logits[:, prompt - 1 : -1]
        nll = F.cross_entropy(predicted.transpose(1, 2), tokens, reduction="none")
        return torch.where(targets == -100, 0.0, nll)


def knob_generator(
    model: nn.Module,
    tokenizer,
    settings: KnobSettings,
    vocabulary: SegmentVocabulary | None = None,
    secondary: nn.Module | None = None,
) -> KnobGenerator | CausalKnobGenerator:
    """The generator of ``model``'s family: :class:`KnobGenerator` (encoder-decoder), else
    :class:`CausalKnobGenerator`."""
    cls = KnobGenerator if is_encoder_decoder(model) else CausalKnobGenerator
    return cls(model, tokenizer, settings, vocabulary=vocabulary, secondary=secondary)
