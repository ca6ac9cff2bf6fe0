"""Positive-congruent training objectives (Yan et al., CVPR 2021), per sample.

Focal distillation:  ``L_i = CE(phi_new_i, y_i) + lambda * w_i * D(phi_new_i, phi_old_i)`` with the focal
weight ``w_i = alpha + beta * 1[argmax phi_old_i = y_i]``: the new model is pulled towards the old one most
where the old one was right. ``alpha=1, beta=0`` is plain distillation. The naive variant skips the distance
and up-weights cross-entropy on the samples the old model got right: ``L_i = w_i * CE(phi_new_i, y_i)``.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor

from trustml.losses.distances import (
    LogitDistance,
    kl_distance,
    logit_difference_inhibition,
    logit_matching_distance,
)

DISTANCES = ("kl", "lm", "ldi")


def logit_distance(
    name: str, temperature: float = 100.0, top_k: int = 10, margin: float = 0.0, power: float = 2.0
) -> LogitDistance:
    """The distance ``D`` called ``name``: ``kl`` (at ``temperature``), ``lm`` (logit matching) or ``ldi``."""
    if name == "kl":
        return partial(kl_distance, temperature=temperature)
    if name == "lm":
        return logit_matching_distance
    if name == "ldi":
        return partial(logit_difference_inhibition, top_k=top_k, margin=margin, power=power)
    raise ValueError(f"unknown distance '{name}'; choose one of {DISTANCES}")


def focal_weights(old_logits: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 5.0) -> Tensor:
    """``w_i = alpha + beta * 1[argmax phi_old_i = y_i]``, shape ``[B]``."""
    old_correct = (old_logits.argmax(dim=-1) == target).to(old_logits.dtype)
    return alpha + beta * old_correct


def focal_distillation_loss(
    new_logits: Tensor,
    old_logits: Tensor,
    target: Tensor,
    distance: LogitDistance,
    weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 5.0,
) -> Tensor:
    """``CE + weight * (alpha + beta * 1[old correct]) * D(new, old)`` per sample, shape ``[B]``."""
    ce = F.cross_entropy(new_logits, target, reduction="none")
    return ce + weight * focal_weights(old_logits, target, alpha, beta) * distance(new_logits, old_logits)


def naive_congruent_loss(
    new_logits: Tensor, old_logits: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 5.0
) -> Tensor:
    """``(alpha + beta * 1[old correct]) * CE`` per sample: cross-entropy up-weighted where the old model was right."""
    ce = F.cross_entropy(new_logits, target, reduction="none")
    return focal_weights(old_logits, target, alpha, beta) * ce
