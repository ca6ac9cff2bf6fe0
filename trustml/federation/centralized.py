"""``federation=none``: ordinary centralized training with one Lightning Trainer.

It has no options of its own. The top-level ``ckpt_path`` (a checkpoint of an earlier run of the same config,
``RUN/checkpoints/last.ckpt``) continues that run with its weights, optimizer state, epoch and step counters and
callback state (e.g. the privacy accountant's spent budget, a ``max_time`` timer's elapsed time). It is read
without executing code (``weights_only``) and checked before training: a file that is not a checkpoint, is
truncated, holds only weights, or was written for another model is refused with one
:class:`~trustml.errors.CheckpointError` that says which and how to go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from trustml.errors import CheckpointError, ConfigError
from trustml.federation.checkpoint import read_checkpoint, state_dict_mismatch
from trustml.plugin import FederationPlugin, FitResult
from trustml.registry import register

#: What to do instead of resuming from a checkpoint that cannot be resumed from.
RESUME_FIX = (
    "resume from checkpoints/last.ckpt of an earlier run of this same configuration, or start over without ckpt_path"
)

#: Entries of a Lightning checkpoint that resuming training needs besides the weights.
TRAINING_STATE_KEYS = ("optimizer_states", "epoch", "global_step")


@dataclass
class CentralizedConfig:
    """``federation=none`` has no options (resume a run with the top-level ``ckpt_path``)."""


def check_checkpoint_exists(ckpt_path: str | Path) -> None:
    """Refuse a ``ckpt_path`` that is no file, pointing at ``RUN/checkpoints/last.ckpt`` when it names a run."""
    if Path(ckpt_path).is_file():
        return
    inside = Path(ckpt_path) / "checkpoints" / "last.ckpt"
    hint = f"did you mean {inside}?" if inside.is_file() else "give a run's checkpoints/last.ckpt"
    raise ConfigError(
        f"ckpt_path={ckpt_path}: no such checkpoint file; {hint} (or leave it unset to train from scratch)"
    )


def check_resume_checkpoint(path: str | Path, module: pl.LightningModule) -> None:
    """Refuse ``path`` as a resume point for ``module`` unless it is a complete Lightning training checkpoint
    whose weights fit ``module`` (same tensor names and shapes); the error names the file, why, and the fix."""
    where = "ckpt_path:"
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
class Centralized(FederationPlugin):
    """Trains the method on the whole training split with a single ``Trainer.fit`` (resumed from ``ckpt_path``)."""

    def __init__(self, config: CentralizedConfig) -> None:
        self.config = config

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse a ``ckpt_path`` that is no file before anything is built."""
        if cfg.get("ckpt_path") is not None:
            check_checkpoint_exists(cfg.ckpt_path)

    def run(
        self,
        method: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        make_trainer: Callable[..., pl.Trainer],
        ckpt_path: str | Path | None = None,
    ) -> FitResult:
        """Fit ``method`` on ``datamodule`` (from ``ckpt_path`` once it passed :func:`check_resume_checkpoint`);
        return the trainer (used afterwards for testing) and no results of its own."""
        if ckpt_path is not None:
            check_checkpoint_exists(ckpt_path)
            check_resume_checkpoint(ckpt_path, method)
        trainer: pl.Trainer = make_trainer()
        trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        return FitResult(trainer, {})
