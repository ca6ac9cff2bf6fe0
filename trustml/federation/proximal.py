"""FedProx's proximal term (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

A client minimises its local objective plus ``(mu / 2) ||w - w_global||^2``, which keeps local models near
the global one under heterogeneous data. :func:`proximal_term` is that term as a pure function;
:class:`ProximalTerm` adds it to a client's training loss inside a Lightning fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


def proximal_term(params: Iterable[Tensor], anchors: Iterable[Tensor], mu: float) -> Tensor:
    """``(mu / 2) sum_i ||w_i - a_i||^2`` over paired parameter and anchor (global) tensors."""
    squares = [(w - a.detach()).square().sum() for w, a in zip(params, anchors, strict=True)]
    return 0.5 * mu * torch.stack(squares).sum()


class ProximalTerm(pl.Callback):
    """Adds FedProx's ``(mu / 2) ||w - w_global||^2`` to the loss of every training step of a client fit.

    The anchor is a copy of the trainable parameters taken when the fit starts (the global model the
    client received). After Lightning's backward pass the term's own backward adds its gradient
    ``mu (w - w_global)`` to ``.grad``, which is exactly the gradient of the summed loss (divided by the
    gradient-accumulation count, as Lightning divides the loss).
    """

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self.anchors: Sequence[Tensor] = ()

    @staticmethod
    def _trainable(module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.anchors = [p.detach().clone() for p in self._trainable(pl_module)]

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._trainable(pl_module)
        if self.mu > 0 and params:
            (proximal_term(params, self.anchors, self.mu) / trainer.accumulate_grad_batches).backward()
