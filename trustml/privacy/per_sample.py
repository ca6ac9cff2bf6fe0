"""The per-sample gradients of a batch, as DP-SGD consumes them: squared norms and weighted sums.

DP-SGD never needs the per-sample gradients ``g_i`` themselves, only ``||g_i||^2`` (to clip) and
``sum_i w_i g_i`` (the clipped sum). Engines that materialize ``g_i`` (``torch.func``) and engines that
compute both quantities from layer activations without materializing them (ghost norms, Goodfellow 2015;
book-keeping, Bu et al. 2023) share this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: A method's per-sample loss: ``sample_losses(logits, batch) -> [B]``.
SampleLossFn = Callable[[Tensor, dict[str, Any]], Tensor]


class PerSampleGradients(ABC):
    """Per-sample gradients ``g_i`` of each named parameter for a batch of ``B`` samples."""

    @abstractmethod
    def squared_norms(self) -> dict[str, Tensor]:
        """``{name: [B]}``: ``||g_i||^2`` of each parameter tensor."""

    @abstractmethod
    def weighted_sum(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{name: sum_i weights[name][i] * g_i}`` (the shape of the parameter)."""

    def add_weighted_sum_(self, weights: Mapping[str, Tensor], totals: Mapping[str, Tensor]) -> None:
        """In place: ``totals[name] += sum_i weights[name][i] * g_i`` (engines override it to skip the temporary)."""
        for name, summed in self.weighted_sum(weights).items():
            totals[name].add_(summed)

    @abstractmethod
    def materialize(self) -> dict[str, Tensor]:
        """``{name: [B, *param.shape]}``: every per-sample gradient (for tests and checks; memory-hungry)."""


class MaterializedGradients(PerSampleGradients):
    """Per-sample gradients held as ``[B, *param.shape]`` tensors."""

    def __init__(self, grads: Mapping[str, Tensor]) -> None:
        self.grads = dict(grads)

    def squared_norms(self) -> dict[str, Tensor]:
        return {name: g.flatten(1).pow(2).sum(1) for name, g in self.grads.items()}

    def weighted_sum(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: torch.tensordot(weights[name].to(g.dtype), g, dims=1) for name, g in self.grads.items()}

    def materialize(self) -> dict[str, Tensor]:
        return dict(self.grads)


class PerSampleResult(NamedTuple):
    """Per-sample gradients of a batch with the model's (detached) logits and per-sample losses ``[B]``."""

    grads: PerSampleGradients
    logits: Tensor
    losses: Tensor
