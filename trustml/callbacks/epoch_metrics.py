"""Per-epoch metrics table of a run (``metrics.csv``) with the wall time of each training epoch."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from statistics import median
from typing import Any

import pytorch_lightning as pl
import torch

from trustml.atomic_files import write_bytes_atomic


class EpochMetricsCSV(pl.Callback):
    """Writes one row per training epoch: epoch, wall seconds, and every logged epoch-level metric.

    ``final_results()`` gives the median and total epoch time for ``results.json``.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "epoch_time_s": round(seconds, 6)}
        for name, value in sorted(trainer.callback_metrics.items()):
            row[name] = float(value.item()) if isinstance(value, torch.Tensor) else float(value)
        self.rows.append(row)
        if trainer.is_global_zero:
            self._write()

    def _write(self) -> None:
        """Rewrite the whole table atomically (tmp + fsync + rename): never a truncated ``metrics.csv``."""
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomic(self.path, buffer.getvalue().encode())

    def final_results(self) -> dict[str, float]:
        """Median and total training-epoch wall time in seconds, and the number of epochs run."""
        if not self.epoch_seconds:
            return {}
        return {
            "epochs": float(len(self.epoch_seconds)),
            "time_per_epoch_s": median(self.epoch_seconds),
            "train_time_s": sum(self.epoch_seconds),
        }
