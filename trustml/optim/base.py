"""Optimizer contracts shared by methods and optimizer plugins."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

SampleLossFn = Callable[[Tensor, dict[str, Any]], Tensor]


class PerSampleGradientOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """An optimizer that needs per-sample gradients (e.g. DP-SGD) and so does its own backward pass.

    Methods detect a subclass of this and, instead of ``loss.backward()``, call :meth:`private_gradients`
    with the model, the method's per-sample loss ``sample_losses(logits, batch) -> [B]`` and the batch;
    then they call ``step()`` through Lightning (so the trainer counts the step) and ``zero_grad()``.
    """

    @abstractmethod
    def private_gradients(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Set each trainable parameter's ``.grad`` from ``batch``; return detached ``(logits, mean loss)``."""

    def private_step(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """:meth:`private_gradients`, then the update and ``zero_grad`` (for use outside a Lightning loop)."""
        logits, loss = self.private_gradients(model, sample_losses, batch)
        self.step()
        self.zero_grad(set_to_none=True)
        return logits, loss
