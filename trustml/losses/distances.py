"""Per-sample distances between new and old logits used by positive-congruent distillation.

Each function maps new logits ``phi_new`` and old logits ``phi_old`` (both ``[B, C]``) to a ``[B]`` tensor;
gradients flow into ``phi_new`` only (the old logits are targets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LogitDistance = Callable[[Tensor, Tensor], Tensor]


def _check_logits(new_logits: Tensor, old_logits: Tensor) -> None:
    if new_logits.shape != old_logits.shape or new_logits.ndim != 2:
        raise ValueError(
            f"new logits {tuple(new_logits.shape)} and old logits {tuple(old_logits.shape)} must both be [B, C] "
            "with the same number of classes"
        )


def kl_distance(new_logits: Tensor, old_logits: Tensor, temperature: float = 100.0) -> Tensor:
    """``tau^2 * KL(softmax(phi_old / tau) || softmax(phi_new / tau))`` per sample (Hinton et al. scaling)."""
    _check_logits(new_logits, old_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_new = F.log_softmax(new_logits / temperature, dim=-1)
    log_p_old = F.log_softmax(old_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_new, log_p_old, reduction="none", log_target=True).sum(dim=-1)
    return kl * temperature**2


def logit_matching_distance(new_logits: Tensor, old_logits: Tensor) -> Tensor:
    """Logit matching ``1/2 * ||phi_new - phi_old||_2^2`` per sample."""
    _check_logits(new_logits, old_logits)
    return 0.5 * (new_logits - old_logits.detach()).pow(2).sum(dim=-1)


def logit_difference_inhibition(
    new_logits: Tensor, old_logits: Tensor, top_k: int = 10, margin: float = 0.0, power: float = 2.0
) -> Tensor:
    """ELODI's logit-difference inhibition (Zhao et al., 2022) per sample.

    ``sum_{k in K} 1[|d_k| > xi] * |d_k|^p`` with ``d = phi_new - phi_old`` and ``K`` the union of the
    ``top_k`` highest-scoring classes of the old and of the new logits: only differences on the classes
    that can decide the prediction, and larger than the margin ``xi``, are penalized.
    """
    _check_logits(new_logits, old_logits)
    if top_k < 1 or margin < 0 or power <= 0:
        raise ValueError(f"need top_k >= 1, margin >= 0, power > 0; got {top_k}, {margin}, {power}")
    old_logits = old_logits.detach()
    k = min(top_k, new_logits.shape[-1])
    selected = torch.zeros_like(new_logits, dtype=torch.bool)
    selected.scatter_(-1, old_logits.topk(k, dim=-1).indices, True)
    selected.scatter_(-1, new_logits.detach().topk(k, dim=-1).indices, True)
    diff = (new_logits - old_logits).abs()
    penalized = selected & (diff > margin)
    return torch.where(penalized, diff.pow(power), torch.zeros_like(diff)).sum(dim=-1)
