"""``federation=none``: ordinary centralized training with one Lightning Trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl

from trustml.registry import register


@dataclass
class CentralizedConfig:
    """Options of ``federation=none`` (none)."""


@register("federation", "none", dataclass=CentralizedConfig)
class Centralized:
    """Trains the method on the whole training split with a single ``Trainer.fit``."""

    def run(
        self, method: pl.LightningModule, datamodule: pl.LightningDataModule, make_trainer: Callable[..., pl.Trainer]
    ) -> pl.Trainer:
        """Fit ``method`` on ``datamodule``; return the trainer (used afterwards for testing)."""
        trainer: pl.Trainer = make_trainer()
        trainer.fit(method, datamodule=datamodule)
        return trainer
