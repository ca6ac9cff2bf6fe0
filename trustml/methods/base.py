"""The base LightningModule every classification method (training objective) builds on.

A method owns the objective only: the network comes from the ``model`` group, the optimizer from the
``optimizer`` group, the data from the ``data`` group. A batch is a dict ``{"x": inputs, "y": labels,
"index": sample ids}`` (plus anything a method adds, e.g. cached old-model logits). Subclasses implement
:meth:`ClassificationMethod.sample_losses`, the per-sample loss as a pure function of the model's logits
and the batch; the mean is the training loss. Optimizers that need per-sample gradients (DP-SGD) get that
function and compute the gradients themselves (see :class:`trustml.optim.base.PerSampleGradientOptimizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from trustml.optim.base import PerSampleGradientOptimizer

Batch = dict[str, Any]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class ClassificationMethod(pl.LightningModule):
    """Trains ``model`` (inputs -> class logits) on ``sample_losses``; logs loss and accuracy per split."""

    #: Input kinds of the data this method can train on (see ``TrustDataModule.input_kind``).
    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({"features", "text"})

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        optimizer_cls = getattr(optimizer, "func", optimizer)
        self.uses_per_sample_gradients = isinstance(optimizer_cls, type) and issubclass(
            optimizer_cls, PerSampleGradientOptimizer
        )
        self.automatic_optimization = not self.uses_per_sample_gradients
        self.save_hyperparameters({"num_classes": num_classes})
        self.metrics = nn.ModuleDict(
            {
                f"{split}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro")
                for split in ("train", "val", "test")
            }
        )

    # --- the objective -------------------------------------------------------------------------------
    def sample_losses(self, logits: Tensor, batch: Batch) -> Tensor:
        """Per-sample training loss, shape ``[B]``; the default is cross-entropy."""
        return F.cross_entropy(logits, batch["y"], reduction="none")

    def batch_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Training loss of a batch, ``(1/B) sum_i sample_losses(logits, batch)_i``.

        With the default :meth:`sample_losses` this is one fused ``F.cross_entropy`` (the same value and gradient
        without a separate mean in the autograd graph, which shows on small models).
        """
        if type(self).sample_losses is ClassificationMethod.sample_losses:
            return F.cross_entropy(logits, batch["y"])
        return self.sample_losses(logits, batch).mean()

    def prepare_batch(self, batch: Batch) -> Batch:
        """Hook to add per-sample tensors to a training batch (e.g. cached old-model logits)."""
        return batch

    # --- Lightning wiring ----------------------------------------------------------------------------
    def forward(self, x: Any) -> Tensor:
        """Class logits of the wrapped model."""
        return self.model(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        batch = self.prepare_batch(batch)
        if self.uses_per_sample_gradients:
            optimizer = self.optimizers()
            logits, loss = optimizer.optimizer.private_gradients(self.model, self.sample_losses, batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            logits = self.model(batch["x"])
            loss = self.batch_loss(logits, batch)
        self._log_split("train", loss, logits, batch["y"])
        return None if self.uses_per_sample_gradients else loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch["x"])
        self._log_split("val", F.cross_entropy(logits, batch["y"]), logits, batch["y"])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch["x"])
        self._log_split("test", F.cross_entropy(logits, batch["y"]), logits, batch["y"])

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self.model(batch["x"])

    def _log_split(self, split: str, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        metric = self.metrics[f"{split}_acc"]
        metric(logits.detach(), y)
        bs = y.shape[0]
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=split != "train", batch_size=bs)
        self.log(f"{split}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
