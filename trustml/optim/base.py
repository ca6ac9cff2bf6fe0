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

    Methods detect a subclass of this and call :meth:`private_step` with the model, the method's
    per-sample loss function ``sample_losses(logits, batch) -> [B]`` and the batch, instead of calling
    ``loss.backward()`` themselves. It returns ``(logits, mean_loss)`` for logging (both detached).
    """

    @abstractmethod
    def private_step(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Compute per-sample gradients of ``sample_losses`` on ``batch``, update the parameters."""
