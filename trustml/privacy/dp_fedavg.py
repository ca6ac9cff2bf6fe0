"""DP-FedAvg's mechanism (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

Client-level DP: each round, every client joins with probability ``q`` (Poisson sampling); each update is
clipped to L2 norm ``S``: ``Delta_k * min(1, S / ||Delta_k||)``; the server adds the Gaussian mechanism's noise
``N(0, sigma^2 S^2 I)`` (:func:`trustml.privacy.mechanism.gaussian_noise`, as DP-SGD does) to the *sum* and divides
by the expected number of participants ``q M`` (the fixed-denominator estimator with equal client weights, so one
client changes the sum by at most ``S``). The privacy loss is accounted by
:class:`~trustml.privacy.accounting.GaussianAccountant` (the accountant DP-SGD uses), one step per round at rate
``q``; with a target epsilon, sigma is calibrated before the first round for the planned rounds
(:func:`calibrate_user_level_noise`), as DP-SGD calibrates its noise before training. Every function takes
explicit arguments (clip norm, noise multiplier, ...), not a federation config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustml.privacy.accounting import calibrate_noise_multiplier
from trustml.privacy.mechanism import gaussian_noise


def clip_updates(updates: Tensor, clip_norm: float) -> Tensor:
    """Rows of ``updates [K, P]`` scaled to L2 norm at most ``clip_norm``: ``Delta_k min(1, S / ||Delta_k||)``."""
    norms = updates.norm(dim=1, keepdim=True)
    return updates * (clip_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


def noisy_mean_of_clipped(
    updates: Tensor, clip_norm: float, noise_multiplier: float, expected_count: float, generator: torch.Generator
) -> Tensor:
    """``(sum_k clip(Delta_k) + N(0, sigma^2 S^2 I)) / (q M)`` for updates ``[K, P]`` (``K`` may be 0)."""
    total = clip_updates(updates, clip_norm).sum(dim=0)
    return (total + gaussian_noise(total, noise_multiplier * clip_norm, generator)) / expected_count


def calibrate_user_level_noise(target_epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """The smallest sigma for which ``rounds`` DP-FedAvg rounds at client rate ``q`` spend at most
    ``target_epsilon`` at ``delta`` (RDP accountant)."""
    return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, rounds, "rdp")
