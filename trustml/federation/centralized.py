"""``federation=none``: ordinary centralized training with one Lightning Trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from trustml.errors import ConfigError
from trustml.registry import register


@dataclass
class CentralizedConfig:
    """Options of ``federation=none``.

    ``resume_from``: a checkpoint of an earlier run of the same config (``RUN/checkpoints/last.ckpt``) to
    continue from, with its weights, optimizer state, epoch and step counters and callback state (e.g. the
    privacy accountant's spent budget, a ``max_time`` timer's elapsed time).
    """

    resume_from: str | None = None


@register("federation", "none", dataclass=CentralizedConfig)
class Centralized:
    """Trains the method on the whole training split with a single ``Trainer.fit`` (optionally resumed)."""

    def __init__(self, resume_from: str | None = None) -> None:
        if resume_from is not None and not Path(resume_from).is_file():
            raise ConfigError(
                f"federation.resume_from={resume_from}: no such checkpoint file; give a run's "
                f"checkpoints/last.ckpt (or leave it unset to train from scratch)"
            )
        self.resume_from = resume_from

    def run(
        self, method: pl.LightningModule, datamodule: pl.LightningDataModule, make_trainer: Callable[..., pl.Trainer]
    ) -> pl.Trainer:
        """Fit ``method`` on ``datamodule``; return the trainer (used afterwards for testing)."""
        trainer: pl.Trainer = make_trainer()
        trainer.fit(method, datamodule=datamodule, ckpt_path=self.resume_from)
        return trainer
