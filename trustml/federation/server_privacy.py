"""DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): user-level DP.

Each round, every device joins with probability ``q`` (Poisson sampling); each update is clipped to L2 norm
``S``: ``Delta_k * min(1, S / ||Delta_k||)``; the server adds Gaussian noise ``N(0, sigma^2 S^2 I)`` to the
*sum* and divides by the expected number of participants ``q M`` (the fixed-denominator estimator with
equal device weights, so one device changes the sum by at most ``S``). The privacy loss of the released
models is tracked with Opacus's RDP accountant of the subsampled Gaussian mechanism, one step per round.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.accountants import RDPAccountant
from torch import Tensor


def clip_updates(updates: Tensor, clip_norm: float) -> Tensor:
    """Rows of ``updates [K, P]`` scaled to L2 norm at most ``clip_norm``: ``Delta_k min(1, S / ||Delta_k||)``."""
    norms = updates.norm(dim=1, keepdim=True)
    return updates * (clip_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


def noisy_mean_of_clipped(
    updates: Tensor, clip_norm: float, noise_multiplier: float, expected_count: float, generator: torch.Generator
) -> Tensor:
    """``(sum_k clip(Delta_k) + N(0, sigma^2 S^2 I)) / (q M)`` for updates ``[K, P]`` (``K`` may be 0)."""
    total = clip_updates(updates, clip_norm).sum(dim=0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * clip_norm)
    return (total + noise) / expected_count


class UserLevelAccountant:
    """User-level privacy loss of DP-FedAvg: Opacus's RDP accountant, one subsampled-Gaussian step per round."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self.accountant = RDPAccountant()

    def step(self, sample_rate: float) -> None:
        """Account for one round in which each device took part with probability ``sample_rate``."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """The ``epsilon`` of ``(epsilon, delta)``-DP spent so far (0 before the first round)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history, for checkpoints."""
        return {"history": list(self.accountant.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.accountant.history = [tuple(h) for h in state["history"]]
