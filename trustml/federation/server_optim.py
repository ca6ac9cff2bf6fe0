"""Server-side aggregation and server optimizers on flat parameter vectors.

One round turns client updates ``Delta_k = w_k^local - w^global`` (rows of a ``[K, P]`` matrix) into a
pseudo-gradient ``Delta = sum_k a_k Delta_k`` (weights ``a_k`` from client selection) and applies a
server optimizer to it, following Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2:

- FedAvg (and FedProx, whose difference is on the client): ``w <- w + eta * Delta``.
- FedAdam: ``m <- b1 m + (1-b1) Delta``, ``v <- b2 v + (1-b2) Delta^2``, ``w <- w + eta m / (sqrt(v) + tau)``.
- FedYogi: as FedAdam with ``v <- v - (1-b2) Delta^2 sign(v - Delta^2)``.

No bias correction, ``v`` starts at ``tau^2`` and ``m`` at zero, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def finite_rows(updates: Tensor) -> list[bool]:
    """Which of the updates ``[K, P]`` hold no NaN or infinity (others are rejected before aggregation).

    A NaN or infinity in a row makes the row's sum non-finite (``inf - inf`` is NaN), so a row with a finite sum
    is finite; only rows whose sum is not (a non-finite value, or large finite values that overflow the sum) are
    checked value by value. One reduction in the usual case instead of a ``[K, P]`` mask.
    """
    finite = torch.isfinite(updates.sum(dim=1))
    if not bool(finite.all()):
        suspects = (~finite).nonzero().flatten()
        finite[suspects] = torch.isfinite(updates[suspects]).all(dim=1)
    return finite.tolist()


def weighted_update(updates: Tensor, weights: Tensor) -> Tensor:
    """``sum_k a_k Delta_k`` for updates ``[K, P]`` and weights ``[K]`` (zeros when ``K = 0``)."""
    return weights.to(updates.dtype) @ updates


class FedAvgServer:
    """``w <- w + eta * Delta`` (McMahan et al. 2017 with server learning rate ``eta``; 1 is plain FedAvg)."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(self, weights: Tensor, pseudo_gradient: Tensor) -> Tensor:
        """The new global weights."""
        return weights + self.server_lr * pseudo_gradient

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state for checkpoints (FedAvg has none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class FedAdamServer:
    """FedAdam (Reddi et al. 2021): Adam on the pseudo-gradient with adaptivity ``tau``, no bias correction."""

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: Tensor | None = None
        self.v: Tensor | None = None

    def second_moment(self, v: Tensor, square: Tensor) -> Tensor:
        """Adam's ``v <- b2 v + (1-b2) Delta^2``."""
        return self.beta2 * v + (1 - self.beta2) * square

    def step(self, weights: Tensor, pseudo_gradient: Tensor) -> Tensor:
        """The new global weights ``w + eta m / (sqrt(v) + tau)``."""
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(weights)
            self.v = torch.full_like(weights, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * pseudo_gradient
        self.v = self.second_moment(self.v, pseudo_gradient.square())
        return weights + self.server_lr * self.m / (self.v.sqrt() + self.tau)

    def state_dict(self) -> dict[str, Any]:
        """First and second moments (``None`` before the first step)."""
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.m, self.v = state["m"], state["v"]


class FedYogiServer(FedAdamServer):
    """FedYogi (Reddi et al. 2021): FedAdam with Yogi's additive second moment."""

    def second_moment(self, v: Tensor, square: Tensor) -> Tensor:
        """Yogi's ``v <- v - (1-b2) Delta^2 sign(v - Delta^2)``."""
        return v - (1 - self.beta2) * square * torch.sign(v - square)


ServerOptimizer = FedAvgServer | FedAdamServer
