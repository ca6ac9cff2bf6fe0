"""The base LightningModule every classification method (training objective) builds on.

A method owns the objective only: the network comes from the ``model`` group, the optimizer from the
``optimizer`` group, the data from the ``data`` group. A batch is a dict ``{"x": inputs, "y": labels,
"index": sample ids}`` (plus anything a method adds, e.g. cached old-model logits). Subclasses implement
:meth:`ClassificationMethod.sample_losses`, the per-sample loss as a pure function of the model's logits
and the batch; the mean is the training loss. Optimizers that need per-sample gradients (DP-SGD; their plugin
says ``needs_per_sample_gradients``) get that function and compute the gradients themselves.
:meth:`ClassificationMethod.training_loss` is the one training step both the Lightning fit and the federation's
client loop run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from trustml.data.base import Batch
from trustml.plugin import MethodPlugin

#: What a method gets as ``optimizer``: an :class:`~trustml.plugin.OptimizerPlugin` (or any callable of the
#: parameters; a plugin's ``needs_per_sample_gradients`` says whether it does its own backward pass).
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def selects_per_sample_optimizer(cfg: DictConfig) -> bool:
    """Whether the optimizer plugin ``cfg`` selects needs per-sample gradients (its ``needs_per_sample_gradients``)."""
    from trustml.registry import plugin_class

    return bool(plugin_class("optimizer", cfg.optimizer).needs_per_sample_gradients)


class ClassificationMethod(MethodPlugin, pl.LightningModule):
    """Trains ``model`` (inputs -> class logits) on ``sample_losses``; logs loss and accuracy per split.

    Built as ``Method(config, model=..., optimizer=..., num_classes=...)`` (``config``: the method's options
    dataclass instance, kept as ``self.config``).
    """

    def __init__(self, config: Any, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.uses_per_sample_gradients = bool(getattr(optimizer, "needs_per_sample_gradients", False))
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

    def training_loss(self, batch: Batch, optimizer: torch.optim.Optimizer | None = None) -> tuple[Tensor, Tensor]:
        """One training step's ``(logits, loss)`` on ``batch`` (after :meth:`prepare_batch`).

        With a per-sample-gradient optimizer the gradients are already in ``.grad`` (the optimizer computed them
        from :meth:`sample_losses`) and both outputs are detached; otherwise ``loss`` is :meth:`batch_loss` with
        its graph, for the caller's ``backward``. The Lightning fit and the federation's client loop both call it.
        """
        batch = self.prepare_batch(batch)
        if self.uses_per_sample_gradients:
            return optimizer.private_gradients(self.model, self.sample_losses, batch)  # type: ignore[attr-defined]
        logits = self.model(batch["x"])
        return logits, self.batch_loss(logits, batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if self.uses_per_sample_gradients:
            optimizer = self.optimizers()
            logits, loss = self.training_loss(batch, optimizer.optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            logits, loss = self.training_loss(batch)
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
