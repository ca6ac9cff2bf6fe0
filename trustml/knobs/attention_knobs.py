"""Knobs A and D: bias the decoder's cross-attention (over encoder segments) or self-attention (over decoder positions).

Attention weights become ``a' = a * b / sum(a * b)``: ``log b`` is added to the attention logits by extending the
attention mask each attention module receives (forward pre-hooks; the model's own eager or SDPA attention runs
unchanged). ``b`` comes from a value per segment, for chosen layers and heads, scaled over decoding steps by a
:class:`~trustml.knobs.schedules.StepSchedule` (``b ** s(t)``). Works inside ``generate()`` (greedy, sampling, beam
search, KV cache) and in teacher-forced forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from trustml.errors import ConfigError
from trustml.knobs.attention_bias import (
    DECODER_SEGMENTS,
    additive_attention_mask,
    biased_attention_mask,
    decoder_segment_ids,
    scheduled_decoder_bias,
    scheduled_encoder_bias,
    segment_log_bias,
)
from trustml.knobs.schedules import StepSchedule
from trustml.knobs.sites import (
    AttentionSite,
    attention_implementation,
    decoder_attention_sites,
    decoder_of,
    decoder_query_positions,
)
from trustml.models.segments import SegmentVocabulary, log_bias_value


def _int_list(values: Sequence[int] | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _normalise_bias_fields(knob: CrossAttentionBias | SelfAttentionBias) -> None:
    """Plain containers for a bias knob's fields (Hydra hands in its own), each ``b`` checked to be > 0."""
    knob.values = dict(knob.values)
    knob.layers = _int_list(knob.layers)
    knob.heads = _int_list(knob.heads)
    for name, b in knob.values.items():
        log_bias_value(name, b)


@dataclass
class CrossAttentionBias:
    """Knob A: bias ``b`` per named encoder segment (e.g. ``{"knowledge": 5.0}``); unnamed segments keep ``b = 1``.

    ``layers``/``heads``: decoder layer and head indices to bias (``None``: all).
    """

    values: dict[str, float] = field(default_factory=dict)
    layers: list[int] | None = None
    heads: list[int] | None = None
    schedule: StepSchedule = field(default_factory=StepSchedule)

    def __post_init__(self) -> None:
        _normalise_bias_fields(self)

    @property
    def is_neutral(self) -> bool:
        """True when every ``b`` is 1 (the knob changes nothing)."""
        return all(float(b) == 1.0 for b in self.values.values())


@dataclass
class SelfAttentionBias:
    """Knob D: bias ``b`` per decoder segment of the self-attention keys seen from each query.

    Segments (:data:`~trustml.knobs.attention_bias.DECODER_SEGMENTS`): ``start`` (the first ``start_length`` decoder
    positions: the start token and any forced prefix), ``previous`` (earlier generated tokens), ``current`` (the
    query's own position). ``layers``/``heads``: as in :class:`CrossAttentionBias`.
    """

    values: dict[str, float] = field(default_factory=dict)
    start_length: int = 1
    layers: list[int] | None = None
    heads: list[int] | None = None
    schedule: StepSchedule = field(default_factory=StepSchedule)

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(DECODER_SEGMENTS)
        if unknown:
            raise ConfigError(
                f"self-attention bias segments {sorted(unknown)} are unknown; use {list(DECODER_SEGMENTS)}"
            )
        _normalise_bias_fields(self)
        if self.start_length < 0:
            raise ConfigError(f"self-attention bias start_length={self.start_length} must be >= 0")

    @property
    def is_neutral(self) -> bool:
        """True when every ``b`` is 1 (the knob changes nothing)."""
        return all(float(b) == 1.0 for b in self.values.values())

    def log_values(self) -> Tensor:
        """``log b`` per decoder segment id, float32 ``[3]``."""
        return torch.tensor([log_bias_value(n, self.values.get(n, 1.0)) for n in DECODER_SEGMENTS], dtype=torch.float32)


_UNCHANGED = object()


def _head_weights(heads: list[int] | None, sites: list[AttentionSite], knob: str) -> Tensor | None:
    if heads is None:
        return None
    num_heads = {site.num_heads for site in sites}
    if len(num_heads) != 1:
        raise ConfigError(f"{knob}: the chosen layers have different head counts {sorted(num_heads)}; pick heads=None")
    (count,) = num_heads
    bad = [h for h in heads if not 0 <= h < count]
    if bad:
        raise ConfigError(f"{knob}: heads {bad} out of range; the decoder has {count} heads (0..{count - 1})")
    weights = torch.zeros(count)
    weights[heads] = 1.0
    return weights


def _select_layers(sites: list[AttentionSite], layers: list[int] | None, knob: str) -> list[AttentionSite]:
    if not sites:
        raise ConfigError(f"{knob}: the model's decoder has no such attention modules")
    if layers is None:
        return sites
    available = sorted({site.layer for site in sites})
    bad = [layer for layer in layers if layer not in available]
    if bad:
        raise ConfigError(f"{knob}: layers {bad} do not exist; decoder layers are {available}")
    return [site for site in sites if site.layer in layers]


class AttentionBiasing:
    """Context manager that applies knobs A (cross-attention) and D (self-attention) to ``model`` inside ``with``.

    ``segment_ids`` (``[B, S]``, aligned with the encoder input, including any appended context code) and
    ``vocabulary`` name the encoder segments knob A addresses. Inputs expanded by ``generate()`` (beams, returned
    sequences) are matched by repeating each row, as ``generate()`` does. Neutral knobs install nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cross_attention: CrossAttentionBias | None = None,
        self_attention: SelfAttentionBias | None = None,
        segment_ids: Tensor | None = None,
        vocabulary: SegmentVocabulary | None = None,
    ) -> None:
        self.model = model
        self.cross = cross_attention if cross_attention is not None and not cross_attention.is_neutral else None
        self.self_attention = self_attention if self_attention is not None and not self_attention.is_neutral else None
        self._handles: list[RemovableHandle] = []
        self._positions: Tensor | None = None
        self._memo: dict[tuple, Any] = {}
        self._encoder_bias: Tensor | None = None
        self._expanded_bias: dict[int, Tensor] = {}
        if self.cross is not None:
            if segment_ids is None or vocabulary is None:
                raise ConfigError("cross-attention bias (knob A) needs segment_ids and their SegmentVocabulary")
            if segment_ids.dim() != 2:
                raise ConfigError(f"segment_ids must be [batch, encoder length], got shape {tuple(segment_ids.shape)}")
            self._encoder_bias = segment_log_bias(segment_ids, vocabulary.log_values(self.cross.values))

    @property
    def active(self) -> bool:
        """Whether any knob here changes attention."""
        return self.cross is not None or self.self_attention is not None

    def __enter__(self) -> AttentionBiasing:
        if not self.active:
            return self
        attention_implementation(self.model)
        sites = decoder_attention_sites(self.model)
        try:
            if self.cross is not None:
                chosen = _select_layers([s for s in sites if s.kind == "cross"], self.cross.layers, "cross_attention")
                heads = _head_weights(self.cross.heads, chosen, "cross_attention")
                self._install(chosen, self._cross_mask_fn(heads))
            if self.self_attention is not None:
                rule = self.self_attention
                chosen = _select_layers([s for s in sites if s.kind == "self"], rule.layers, "self_attention")
                heads = _head_weights(rule.heads, chosen, "self_attention")
                self._install(chosen, self._self_mask_fn(heads))
            hook = decoder_of(self.model).register_forward_pre_hook(self._on_decoder_forward, with_kwargs=True)
            self._handles.append(hook)
        except Exception:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._memo.clear()
        self._positions = None

    # --- hooks --------------------------------------------------------------------------------------------
    def _on_decoder_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        offset, length = decoder_query_positions(args, kwargs)
        self._positions = torch.arange(offset, offset + length)
        self._memo.clear()

    def _install(self, sites: list[AttentionSite], mask_fn) -> None:
        for site in sites:

            def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], site: AttentionSite = site):
                mask = site.mask(args, kwargs)
                hidden = args[0] if args else kwargs["hidden_states"]
                key = (site.kind, id(mask), hidden.shape[0])
                if key not in self._memo:
                    self._memo[key] = mask_fn(mask, hidden)
                new_mask = self._memo[key]
                return None if new_mask is _UNCHANGED else site.with_mask(args, kwargs, new_mask)

            self._handles.append(site.module.register_forward_pre_hook(hook, with_kwargs=True))

    def _strengths(self, schedule: StepSchedule) -> Tensor | None:
        if self._positions is None:
            raise RuntimeError("attention knob called outside a decoder forward")
        strengths = schedule.strengths(self._positions)
        return strengths if bool(strengths.any()) else None

    def _batch_bias(self, batch_size: int, device: torch.device) -> Tensor:
        if batch_size not in self._expanded_bias:
            base = self._encoder_bias
            if batch_size % base.shape[0]:
                raise ConfigError(
                    f"segment_ids cover {base.shape[0]} inputs but the decoder runs {batch_size} rows; pass the "
                    "segment ids of exactly the batch given to generate()"
                )
            self._expanded_bias[batch_size] = base.repeat_interleave(batch_size // base.shape[0], dim=0).to(device)
        return self._expanded_bias[batch_size]

    def _cross_mask_fn(self, heads: Tensor | None):
        def biased(mask: Tensor | None, hidden: Tensor):
            strengths = self._strengths(self.cross.schedule)
            if strengths is None:
                return _UNCHANGED
            log_bias = self._batch_bias(hidden.shape[0], hidden.device)
            if mask is not None and mask.shape[-1] != log_bias.shape[-1]:
                raise ConfigError(
                    f"segment_ids have {log_bias.shape[-1]} positions but the encoder states have {mask.shape[-1]}; "
                    "pass segment ids of the same (context-augmented) encoder input"
                )
            bias = scheduled_encoder_bias(log_bias, strengths.to(hidden.device), _on(heads, hidden))
            positions = self._positions.to(hidden.device)
            dtype = mask.dtype if mask is not None and mask.is_floating_point() else hidden.dtype
            base = additive_attention_mask(mask, positions, log_bias.shape[-1], causal=False, dtype=dtype)
            return biased_attention_mask(base, bias)

        return biased

    def _self_mask_fn(self, heads: Tensor | None):
        rule = self.self_attention
        log_values = rule.log_values()

        def biased(mask: Tensor | None, hidden: Tensor):
            strengths = self._strengths(rule.schedule)
            if strengths is None:
                return _UNCHANGED
            positions = self._positions.to(hidden.device)
            key_length = mask.shape[-1] if mask is not None else int(self._positions[-1]) + 1
            segments = decoder_segment_ids(positions, key_length, rule.start_length)
            bias = scheduled_decoder_bias(
                log_values.to(hidden.device)[segments], strengths.to(hidden.device), _on(heads, hidden)
            )
            dtype = mask.dtype if mask is not None and mask.is_floating_point() else hidden.dtype
            base = additive_attention_mask(mask, positions, key_length, causal=True, dtype=dtype)
            return biased_attention_mask(base, bias)

        return biased


def _on(weights: Tensor | None, like: Tensor) -> Tensor | None:
    return None if weights is None else weights.to(like.device)
