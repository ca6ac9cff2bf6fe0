"""Membership-inference attacks as pure functions of per-example losses and logits.

* LOSS attack (Yeom et al., CSF 2018): an example is a member when its loss is low; score ``-loss``.
* Offline LiRA (Carlini et al., S&P 2022): for example ``(x, y)`` take the logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))`` of the target model, fit a Gaussian ``N(mu_out, sigma_out^2)`` to ``phi``
  under shadow models that did *not* train on ``x``, and score ``log Pr[Z <= phi]``, ``Z ~ N(mu_out,
  sigma_out^2)`` (a one-sided likelihood-ratio test against the "out" hypothesis). Shadow models train on
  random halves of the data (:func:`shadow_in_masks`).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import norm
from torch import Tensor


def loss_attack_scores(losses: ArrayLike) -> np.ndarray:
    """LOSS attack membership scores ``-loss`` (higher = more likely a member)."""
    return -np.asarray(losses, dtype=float)


def logit_scaled_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """``phi = log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j`` per example, computed stably."""
    true = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


def shadow_in_masks(num_examples: int, num_shadow: int, seed: int = 0) -> np.ndarray:
    """Boolean ``[num_shadow, num_examples]``: which examples each shadow model trains on.

    Every model gets a random half of the data and every example is in exactly ``num_shadow // 2`` models
    (Carlini et al.'s scheme), so each example has ``num_shadow - num_shadow // 2`` "out" models.
    """
    if num_shadow < 2:
        raise ValueError(f"LiRA needs at least 2 shadow models, got {num_shadow}")
    order = np.random.default_rng(seed).random((num_shadow, num_examples)).argsort(0)
    return order < num_shadow // 2


def lira_offline_scores(
    target_confidence: ArrayLike, shadow_confidence: ArrayLike, shadow_in: ArrayLike, fix_variance: bool = False
) -> np.ndarray:
    """Offline LiRA scores ``log Pr[Z <= phi_target]`` with ``Z`` fitted on each example's "out" shadows.

    ``target_confidence``: ``[n]`` logit-scaled confidences of the target model; ``shadow_confidence``:
    ``[k, n]`` the same under each shadow model; ``shadow_in``: ``[k, n]`` whether shadow ``j`` trained on
    example ``i``. ``fix_variance`` uses one variance pooled over all examples (better with few shadows).
    """
    target = np.asarray(target_confidence, dtype=float)
    shadow = np.asarray(shadow_confidence, dtype=float)
    out = ~np.asarray(shadow_in, dtype=bool)
    if shadow.shape != out.shape or shadow.shape[1:] != target.shape:
        raise ValueError(
            f"shapes differ: target {target.shape}, shadow confidences {shadow.shape}, shadow membership {out.shape}"
        )
    count = out.sum(0)
    if (count < 2).any():
        raise ValueError(
            f"{int((count < 2).sum())} examples have fewer than 2 shadow models that did not train on them; "
            f"train more shadow models (see shadow_in_masks)"
        )
    mean = (shadow * out).sum(0) / count
    squared_dev = ((shadow - mean) ** 2 * out).sum(0)
    std = np.sqrt(squared_dev.sum() / (count - 1).sum()) if fix_variance else np.sqrt(squared_dev / (count - 1))
    return norm.logcdf(target, loc=mean, scale=np.maximum(std, 1e-12))
