"""DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): user-level DP.

Each round, every device joins with probability ``q`` (Poisson sampling); each update is clipped to L2 norm
``S``: ``Delta_k * min(1, S / ||Delta_k||)``; the server adds Gaussian noise ``N(0, sigma^2 S^2 I)`` to the
*sum* and divides by the expected number of participants ``q M`` (the fixed-denominator estimator with
equal device weights, so one device changes the sum by at most ``S``). The privacy loss of the released
models is tracked with Opacus's RDP accountant of the subsampled Gaussian mechanism, one step per round
(through :mod:`trustml.privacy.accounting`, the accounting code DP-SGD uses). With a target epsilon instead of
a noise multiplier, sigma is calibrated before the first round for the planned rounds at rate ``q``
(:func:`calibrate_user_level_noise`), as DP-SGD calibrates its noise before training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustml.privacy.accounting import calibrate_noise_multiplier, make_accountant, spent_epsilon


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


def calibrate_user_level_noise(target_epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """The smallest sigma for which ``rounds`` DP-FedAvg rounds at device rate ``q`` spend at most
    ``target_epsilon`` at ``delta`` (RDP accountant)."""
    return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, rounds, "rdp")


class UserLevelAccountant:
    """User-level privacy loss of DP-FedAvg: Opacus's RDP accountant, one subsampled-Gaussian step per round."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self.accountant = make_accountant("rdp")

    def step(self, sample_rate: float) -> None:
        """Account for one round in which each device took part with probability ``sample_rate``."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """The ``epsilon`` of ``(epsilon, delta)``-DP spent so far (0 before the first round)."""
        return spent_epsilon(self.accountant, self.delta)

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history, for checkpoints."""
        return {"history": list(self.accountant.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.accountant.history = [tuple(h) for h in state["history"]]
