"""The Gaussian mechanism of DP-SGD (Abadi et al., 2016) on per-sample gradients.

Each sample's gradient is clipped to L2 norm at most ``C``: ``g_i * min(1, C / ||g_i||)``; the clipped
gradients are summed and Gaussian noise ``N(0, sigma^2 C^2 I)`` is added, so adding or removing one sample
changes the sum by at most ``C`` and the noise multiplier ``sigma`` sets the privacy cost per step.

Automatic clipping (Bu et al., "Automatic Clipping: Differentially Private Deep Learning Made Easier and
Stronger", NeurIPS 2023; AUTO-S, fastDP's default) normalizes instead: ``g_i * C / (||g_i|| + gamma)``. Every
scaled gradient has norm below ``C``, so the sensitivity, the noise ``N(0, sigma^2 C^2 I)`` and the accountant
are those of flat clipping; but no gradient is left unscaled, so ``C`` only multiplies the whole update (like the
learning rate) and there is no bound to tune. ``gamma > 0`` keeps small gradients from being blown up to norm
``C`` (their direction is unreliable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from trustml.privacy.options import CLIPPING_MODES
from trustml.privacy.per_sample import PerSampleGradients

_EPS = 1e-6


def clip_factors(norms: Tensor, max_norm: float) -> Tensor:
    """Per-sample scale ``min(1, C / ||g_i||)`` that clips each gradient to norm at most ``C``."""
    return (max_norm / (norms + _EPS)).clamp(max=1.0)


def automatic_factors(norms: Tensor, scale: float, gamma: float) -> Tensor:
    """Per-sample scale ``C / (||g_i|| + gamma)`` of automatic clipping (AUTO-S): each ``g_i`` ends below norm ``C``."""
    return scale / (norms + gamma)


def clipping_weights(
    squared_norms: Mapping[str, Tensor], max_grad_norm: float, mode: str, gamma: float = 0.01
) -> dict[str, Tensor]:
    """Per-parameter, per-sample clipping factors from the squared norms ``{name: [B]}``.

    ``flat`` clips the whole gradient vector to ``C`` (one factor per sample); ``per_layer`` clips each
    parameter tensor to ``C / sqrt(K)`` (``K`` parameter tensors), so the whole vector still has norm at
    most ``C``; ``automatic`` scales the whole vector by ``C / (||g_i|| + gamma)`` (:func:`automatic_factors`).
    """
    if mode in ("flat", "automatic"):
        norms = torch.stack(list(squared_norms.values())).sum(0).sqrt()
        if mode == "flat":
            factors = clip_factors(norms, max_grad_norm)
        else:
            factors = automatic_factors(norms, max_grad_norm, gamma)
        return dict.fromkeys(squared_norms, factors)
    if mode == "per_layer":
        layer_norm = max_grad_norm / math.sqrt(len(squared_norms))
        return {name: clip_factors(sq.sqrt(), layer_norm) for name, sq in squared_norms.items()}
    raise ValueError(f"clipping mode must be one of {CLIPPING_MODES}, got {mode!r}")


def clipped_sum(
    grads: PerSampleGradients, max_grad_norm: float, mode: str = "flat", gamma: float = 0.01
) -> dict[str, Tensor]:
    """``sum_i clip_C(g_i)`` for every parameter (see :func:`clipping_weights` for the modes)."""
    return grads.weighted_sum(clipping_weights(grads.squared_norms(), max_grad_norm, mode, gamma))


def add_clipped_sum_(
    grads: PerSampleGradients,
    totals: Mapping[str, Tensor],
    max_grad_norm: float,
    mode: str = "flat",
    gamma: float = 0.01,
) -> None:
    """In place: ``totals[name] += sum_i clip_C(g_i)`` (:func:`clipped_sum` into buffers the caller keeps)."""
    grads.add_weighted_sum_(clipping_weights(grads.squared_norms(), max_grad_norm, mode, gamma), totals)


def gaussian_noise(like: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """``N(0, std^2 I)`` of ``like``'s shape, dtype and device, drawn from ``generator``."""
    return torch.normal(0.0, std, size=like.shape, generator=generator, device=like.device, dtype=like.dtype)


#: Elements of the noise drawn at a time by :func:`add_gaussian_noise_` (4 MiB of float32).
NOISE_CHUNK = 1 << 20


def add_gaussian_noise_(
    summed: Mapping[str, Tensor], std: float, generator: torch.Generator, scratch: dict[Any, Tensor]
) -> Mapping[str, Tensor]:
    """In place: ``summed[name] += N(0, std^2 I)`` for every tensor, drawn from ``generator``.

    The noise is drawn :data:`NOISE_CHUNK` elements at a time into one buffer per device and dtype, kept in
    ``scratch`` by the caller across steps: a step allocates no tensor of the model's size (with millions of
    trainable weights the allocation costs about as much as the draw) and holds at most 4 MiB more memory.
    """
    for s in summed.values():
        if not s.is_contiguous():  # not a sum this module's callers produce; drawn whole
            s.add_(gaussian_noise(s, std, generator))
            continue
        key = (s.device, s.dtype)
        if key not in scratch:
            scratch[key] = torch.empty(NOISE_CHUNK, device=s.device, dtype=s.dtype)
        buffer = scratch[key]
        flat = s.view(-1)
        for start in range(0, flat.numel(), NOISE_CHUNK):
            part = flat[start : start + NOISE_CHUNK]
            part.add_(buffer[: part.numel()].normal_(0.0, std, generator=generator))
    return summed
