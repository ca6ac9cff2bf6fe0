"""Pure tensor functions of attention biasing: ``a' = a * b / sum(a * b)``, i.e. ``log b`` added to the logits.

Shapes follow Hugging Face attention: masks and biases are ``[batch, heads, query, key]`` (size-1 dims broadcast).
A bias is always a *log*-bias here; ``log b = 0`` is neutral.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Decoder self-attention segments of knob D, by id: the first ``start_length`` decoder positions, the earlier
#: generated positions, and the query's own position.
DECODER_SEGMENTS = ("start", "previous", "current")


def segment_log_bias(segment_ids: Tensor, log_values: Tensor) -> Tensor:
    """``log b`` of every encoder position (``[B, S]``) from its segment id and ``log b`` per segment id."""
    return log_values.to(segment_ids.device)[segment_ids]


def decoder_segment_ids(query_positions: Tensor, key_length: int, start_length: int) -> Tensor:
    """Knob D's segment id (index into :data:`DECODER_SEGMENTS`) of each (query, key) pair, ``[Q, K]``.

    Key ``k`` seen from query position ``q``: ``current`` when ``k == q``, else ``start`` when ``k < start_length``,
    else ``previous``. Keys after the query (``k > q``) are causally masked anyway and get ``previous``.
    """
    keys = torch.arange(key_length, device=query_positions.device)
    segment = torch.where(keys < start_length, 0, 1).expand(query_positions.numel(), key_length)
    return torch.where(keys[None, :] == query_positions[:, None], 2, segment)


def _restrict_heads(bias: Tensor, head_weights: Tensor | None) -> Tensor:
    return bias if head_weights is None else bias * head_weights.to(bias)[None, :, None, None]


def scheduled_encoder_bias(log_bias: Tensor, strengths: Tensor, head_weights: Tensor | None) -> Tensor:
    """Knob A's log-bias ``s(t) * log b`` for every query row and chosen head: ``[B, H|1, Q, S]``.

    ``log_bias`` is ``[B, S]`` (per encoder position), ``strengths`` ``[Q]`` (per query), ``head_weights`` ``[H]`` of
    0/1 (``None``: every head).
    """
    bias = log_bias[:, None, None, :] * strengths.to(log_bias)[None, None, :, None]
    return _restrict_heads(bias, head_weights)


def scheduled_decoder_bias(log_bias: Tensor, strengths: Tensor, head_weights: Tensor | None) -> Tensor:
    """Knob D's log-bias ``s(t) * log b`` per (query, key) pair and chosen head: ``[1, H|1, Q, K]``.

    ``log_bias`` is ``[Q, K]``, ``strengths`` ``[Q]``, ``head_weights`` ``[H]`` of 0/1 (``None``: every head).
    """
    bias = (log_bias * strengths.to(log_bias)[:, None])[None, None]
    return _restrict_heads(bias, head_weights)


def additive_attention_mask(
    mask: Tensor | None,
    query_positions: Tensor,
    key_length: int,
    causal: bool,
    dtype: torch.dtype,
) -> Tensor:
    """The attention mask as an additive float mask (0 = attend, dtype minimum = masked), ``[B|1, 1, Q, K]``.

    Hugging Face passes ``None`` (no masking, or causal masking left to SDPA's ``is_causal``), a boolean mask (SDPA:
    True = attend) or an additive float mask (eager). For ``None`` with ``causal``, query ``i`` at decoder position
    ``query_positions[i]`` attends to keys ``0..query_positions[i]``.
    """
    minimum = torch.finfo(dtype).min
    if mask is None:
        if not causal:
            return torch.zeros(1, 1, 1, key_length, dtype=dtype, device=query_positions.device)
        keys = torch.arange(key_length, device=query_positions.device)
        allowed = keys[None, :] <= query_positions[:, None]
        return torch.where(allowed, 0.0, minimum).to(dtype)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, minimum).to(dtype)
    return mask


def biased_attention_mask(additive_mask: Tensor, log_bias: Tensor) -> Tensor:
    """``mask + log b`` clamped at the dtype minimum, so masked positions stay masked and nothing overflows."""
    combined = additive_mask + log_bias.to(additive_mask.dtype)
    return combined.clamp_(min=torch.finfo(additive_mask.dtype).min)
