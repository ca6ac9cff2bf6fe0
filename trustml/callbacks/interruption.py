"""A safety net for stop signals: end the fit at the next batch when a SIGTERM/SIGINT's raise was lost."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from trustml.run_record import raise_if_interrupted


class StopOnReceivedSignal(pl.Callback):
    """After every training and validation batch, raise :class:`~trustml.run_record.RunInterrupted` if the run
    received a stop signal whose raise did not reach the training code (see
    :func:`~trustml.run_record.raise_if_interrupted`); costs one attribute check per batch."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        raise_if_interrupted()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        raise_if_interrupted()
