"""Knob C: context augmentation — append a pooled encoding of control phrases to the encoder states.

The control phrases (e.g. ten generic questions, topic phrases) are encoded by the model's own encoder and pooled
into a context code ``c`` (``[C, d]``); every input's encoder states become ``[h_1..h_S; c]`` with the attention
mask extended by ones. The appended positions form the ``control`` segment, so knob A can bias them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from trustml.errors import ConfigError

POOLINGS = ("positionwise", "mean", "per_phrase")
Pooling = Literal["positionwise", "mean", "per_phrase"]


def pool_phrase_states(states: Tensor, mask: Tensor, pooling: Pooling) -> Tensor:
    """Pool encoder states of ``P`` phrases (``[P, L, d]``, padding ``mask`` ``[P, L]``) into a context code.

    - ``positionwise``: ``c_l = mean_p h_{p,l}`` over the phrases that have position ``l`` (``[L, d]``);
    - ``mean``: one vector, the mean over every token of every phrase (``[1, d]``);
    - ``per_phrase``: one vector per phrase, the mean over its tokens (``[P, d]``).
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"context pooling={pooling!r} is unknown; use one of {list(POOLINGS)}")
    weights = mask.to(states.dtype)[..., None]
    summed = states * weights
    if pooling == "positionwise":
        return summed.sum(0) / weights.sum(0).clamp(min=1.0)
    if pooling == "mean":
        return summed.sum((0, 1))[None] / weights.sum().clamp(min=1.0)
    return summed.sum(1) / weights.sum(1).clamp(min=1.0)


@torch.no_grad()
def encode_control_phrases(model: nn.Module, tokenizer, phrases: Sequence[str], pooling: Pooling = "positionwise"):
    """The context code of ``phrases`` (``[C, d]``) under ``model``'s encoder, pooled by ``pooling``."""
    if not phrases:
        raise ConfigError("context augmentation needs at least one control phrase")
    device = next(model.parameters()).device
    enc = tokenizer(list(phrases), return_tensors="pt", padding=True, return_token_type_ids=False).to(device)
    states = model.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    return pool_phrase_states(states, enc["attention_mask"], pooling)


def append_context(
    encoder_states: Tensor,
    attention_mask: Tensor,
    code: Tensor,
    segment_ids: Tensor | None = None,
    control_segment: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``[h; c]`` for every input (``[B, S + C, d]``), the mask extended by ones, and segment ids extended by
    ``control_segment`` (when ``segment_ids`` are given)."""
    batch = encoder_states.shape[0]
    if code.shape[-1] != encoder_states.shape[-1]:
        raise ConfigError(
            f"context code width {code.shape[-1]} != encoder width {encoder_states.shape[-1]}; encode the control "
            "phrases with the same model"
        )
    code = code.to(encoder_states)[None].expand(batch, -1, -1)
    states = torch.cat([encoder_states, code], dim=1)
    ones = attention_mask.new_ones(batch, code.shape[1])
    mask = torch.cat([attention_mask, ones], dim=1)
    if segment_ids is None:
        return states, mask, None
    if control_segment is None:
        raise ConfigError("append_context with segment_ids needs control_segment (the vocabulary's control id)")
    segments = torch.cat([segment_ids, segment_ids.new_full((batch, code.shape[1]), control_segment)], dim=1)
    return states, mask, segments


@torch.no_grad()
def augmented_encoder_inputs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    code: Tensor,
    segment_ids: Tensor | None = None,
    control_segment: int | None = None,
) -> tuple[dict[str, object], Tensor | None]:
    """Encode ``input_ids`` and append the context code; returns ``generate()``/forward keyword arguments
    (``encoder_outputs``, ``attention_mask``) and the extended segment ids."""
    states = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    states, mask, segments = append_context(states, attention_mask, code, segment_ids, control_segment)
    return {"encoder_outputs": BaseModelOutput(last_hidden_state=states), "attention_mask": mask}, segments
