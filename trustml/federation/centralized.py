"""``federation=none``: ordinary centralized training with one Lightning Trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from trustml.errors import CheckpointError, ConfigError
from trustml.federation.checkpoint import read_checkpoint, state_dict_mismatch
from trustml.registry import register

#: What to do instead of resuming from a checkpoint that cannot be resumed from.
RESUME_FIX = (
    "resume from checkpoints/last.ckpt of an earlier run of this same configuration, or start over without "
    "federation.resume_from"
)

#: Entries of a Lightning checkpoint that resuming training needs besides the weights.
TRAINING_STATE_KEYS = ("optimizer_states", "epoch", "global_step")


@dataclass
class CentralizedConfig:
    """Options of ``federation=none``.

    ``resume_from``: a checkpoint of an earlier run of the same config (``RUN/checkpoints/last.ckpt``) to
    continue from, with its weights, optimizer state, epoch and step counters and callback state (e.g. the
    privacy accountant's spent budget, a ``max_time`` timer's elapsed time). It is read without executing
    code (``weights_only``) and checked before training: a file that is not a checkpoint, is truncated, holds
    only weights, or was written for another model is refused with one :class:`~trustml.errors.CheckpointError`
    that says which and how to go on.
    """

    resume_from: str | None = None


def check_resume_checkpoint(path: str | Path, module: pl.LightningModule) -> None:
    """Refuse ``path`` as a resume point for ``module`` unless it is a complete Lightning training checkpoint
    whose weights fit ``module`` (same tensor names and shapes); the error names the file, why, and the fix."""
    where = "federation.resume_from:"
    try:
        checkpoint = read_checkpoint(Path(path), RESUME_FIX)
    except CheckpointError as exc:
        raise CheckpointError(f"{where} {exc}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{where} {path} is a PyTorch file but not a Lightning training checkpoint (it has no 'state_dict'); "
            f"{RESUME_FIX}"
        )
    absent = [key for key in TRAINING_STATE_KEYS if key not in checkpoint]
    if absent:
        raise CheckpointError(
            f"{where} {path} holds model weights only (no {', '.join(absent)}), e.g. the final model of a "
            f"federated run, while resuming needs the training state too; {RESUME_FIX}"
        )
    mismatch = state_dict_mismatch(checkpoint["state_dict"], module.state_dict())
    if mismatch and getattr(module, "strict_loading", True):
        raise CheckpointError(f"{where} {path} was written for another model: {mismatch}; {RESUME_FIX}")


@register("federation", "none", dataclass=CentralizedConfig)
class Centralized:
    """Trains the method on the whole training split with a single ``Trainer.fit`` (optionally resumed)."""

    def __init__(self, resume_from: str | None = None) -> None:
        if resume_from is not None and not Path(resume_from).is_file():
            inside = Path(resume_from) / "checkpoints" / "last.ckpt"
            hint = f"did you mean {inside}?" if inside.is_file() else "give a run's checkpoints/last.ckpt"
            raise ConfigError(
                f"federation.resume_from={resume_from}: no such checkpoint file; {hint} (or leave it unset to "
                f"train from scratch)"
            )
        self.resume_from = resume_from

    def run(
        self, method: pl.LightningModule, datamodule: pl.LightningDataModule, make_trainer: Callable[..., pl.Trainer]
    ) -> pl.Trainer:
        """Fit ``method`` on ``datamodule`` (from ``resume_from`` once it passed :func:`check_resume_checkpoint`);
        return the trainer (used afterwards for testing)."""
        if self.resume_from is not None:
            check_resume_checkpoint(self.resume_from, method)
        trainer: pl.Trainer = make_trainer()
        trainer.fit(method, datamodule=datamodule, ckpt_path=self.resume_from, weights_only=True)
        return trainer
