"""Audited runs: a finished run's model, the data it was trained on, and its training-set membership.

A run directory records its composed config in ``.hydra/config.yaml``; rebuilding its ``data`` node gives
the exact training split (seeded split, seeded ``train_subset_fraction`` subset), so membership of every
candidate sample follows from the sample ids alone. Shadow runs must use the same data as the target up to
the subset options (:data:`SUBSET_OPTIONS`) and loader sizes.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from trustml.data.base import Split, TrustDataModule
from trustml.errors import CheckpointError, ConfigError
from trustml.privacy.audit.scoring import accuracy_on_split
from trustml.registry import build_plugin
from trustml.run_record import load_model_from_run, read_run
from trustml.safety import check_targets

log = logging.getLogger(__name__)

#: Data options that may differ between the target and its shadow runs (which part of the data they train
#: on, and how it is batched); every other data option must be equal.
SUBSET_OPTIONS = ("train_subset_fraction", "train_subset_seed")
LOADER_OPTIONS = ("batch_size", "eval_batch_size")


def run_config(run_dir: str | Path) -> DictConfig:
    """The composed config a run recorded in ``.hydra/config.yaml`` (unresolved interpolations kept)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a trustml run directory (or ran without Hydra)")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "data" not in cfg:
        raise CheckpointError(f"{path} holds no data config")
    return cfg


def data_identity(data_cfg: DictConfig) -> dict[str, Any]:
    """The data options that decide which samples exist and what their ids are (subset and loader options left out)."""
    ignored = (*SUBSET_OPTIONS, *LOADER_OPTIONS)
    container = OmegaConf.to_container(data_cfg, resolve=False)
    return {k: v for k, v in container.items() if k not in ignored}


def check_same_data(target: DictConfig, shadow: DictConfig, target_dir: Path, shadow_dir: Path) -> None:
    """Refuse a shadow run whose data differs from the target's beyond the subset and loader options."""
    want, got = data_identity(target), data_identity(shadow)
    differing = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if differing:
        details = "; ".join(f"data.{k}: target {want.get(k)!r}, shadow {got.get(k)!r}" for k in differing)
        raise ConfigError(
            f"shadow run {shadow_dir} was trained on other data than the target {target_dir} ({details}); "
            f"shadow runs may differ only in data.{'/'.join(SUBSET_OPTIONS)} - re-run them with the target's data"
        )


def build_datamodule(data_cfg: DictConfig, trusted_prefixes: list[str], **overrides: Any) -> TrustDataModule:
    """The data module of ``data_cfg`` (with ``overrides`` applied), set up for fitting."""
    cfg = OmegaConf.create({"data": OmegaConf.to_container(data_cfg, resolve=False)})
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg.data[key] = value
    check_targets(cfg, trusted_prefixes)
    datamodule = build_plugin("data", cfg.data)
    datamodule.setup("fit")
    return datamodule


@dataclass
class AuditedRun:
    """A finished run: its directory, rebuilt model, data config, the ids of its training samples, its test split."""

    run_dir: Path
    model: nn.Module
    data_cfg: DictConfig
    train_ids: np.ndarray
    label_names: list[str]
    #: the split the run was tested on (``test/acc``), rebuilt from its data config
    test_split: Split = field(repr=False)
    #: which weights :attr:`model` holds (``best`` or ``last``)
    checkpoint: str = "best"


def load_audited_run(run_dir: str | Path, checkpoint: str = "best") -> AuditedRun:
    """Rebuild a completed run's model (``best`` or ``last`` weights) and the ids of its training samples."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    cfg = run_config(run_dir)
    model, spec = load_model_from_run(run_dir, checkpoint=checkpoint)
    data_cfg = _resolved_data(cfg, run_dir)
    datamodule = build_datamodule(data_cfg, list(record.get("trusted_target_prefixes") or []))
    return AuditedRun(
        run_dir=run_dir,
        model=model,
        data_cfg=data_cfg,
        train_ids=datamodule.splits["train"].index.numpy(),
        label_names=list(spec.get("label_names") or []),
        test_split=datamodule.splits["test"],
        checkpoint=checkpoint,
    )


def checkpoint_test_accuracy(run: AuditedRun, batch_size: int = 512) -> dict[str, Any]:
    """The test accuracy of the weights that are audited (``run.checkpoint``), recomputed on the run's test split,
    and where in training those weights come from.

    A run's ``results.json`` holds the test accuracy of its *best* checkpoint; an audit of the ``last`` weights
    must report theirs, so audit tables show the accuracy of the model that was attacked. ``checkpoint_epoch`` is
    the epoch stored in the checkpoint and ``run_last_epoch`` the last epoch of the run's ``metrics.csv`` (``None``
    without one); they differ for a ``last.ckpt`` that is not the end of training (see
    :func:`checkpoint_position`).
    """
    position = checkpoint_position(run.run_dir, run.checkpoint)
    return {
        "test_acc": accuracy_on_split(run.model, run.test_split, batch_size),
        "test_acc_checkpoint": run.checkpoint,
        "num_test": len(run.test_split),
        **position,
    }


def checkpoint_position(run_dir: Path, checkpoint: str) -> dict[str, int | None]:
    """Epoch and global step stored in ``checkpoints/<checkpoint>.ckpt`` and the run's last epoch (``metrics.csv``).

    Logs a warning when ``last`` is not the run's last epoch: Lightning >= 2.6 writes ``last.ckpt`` of a
    ``ModelCheckpoint(save_last=True, save_top_k=1)`` only when it saves a new best checkpoint, so there
    ``last.ckpt`` is a copy of ``best.ckpt``, not the end of training.
    """
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.ckpt"
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights loaded already; a missing position is reported as None
        log.warning("cannot read the epoch of %s: %s", path, exc)
        stored = {}
    epoch = stored.get("epoch") if isinstance(stored, dict) else None
    step = stored.get("global_step") if isinstance(stored, dict) else None
    last_epoch = _last_logged_epoch(Path(run_dir) / "metrics.csv")
    if checkpoint == "last" and epoch is not None and last_epoch is not None and epoch < last_epoch:
        log.warning(
            "%s holds epoch %d but %s trained to epoch %d: it is not the end of training (Lightning >= 2.6 writes "
            "last.ckpt only with a new best checkpoint when save_top_k=1); the audit attacks epoch %d's weights",
            path,
            epoch,
            run_dir,
            last_epoch,
            epoch,
        )
    return {
        "checkpoint_epoch": None if epoch is None else int(epoch),
        "checkpoint_global_step": None if step is None else int(step),
        "run_last_epoch": last_epoch,
    }


def _last_logged_epoch(metrics_csv: Path) -> int | None:
    """The ``epoch`` of the last row of a run's ``metrics.csv`` (``None`` when absent or without that column)."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="") as handle:
        epochs = [row.get("epoch") for row in csv.DictReader(handle)]
    try:
        return int(float(epochs[-1])) if epochs and epochs[-1] not in (None, "") else None
    except ValueError:
        return None


def _resolved_data(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's data node with interpolations (paths) resolved; an interpolation that cannot be is an error."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    except Exception as exc:  # noqa: BLE001 - any resolver failure means the recorded data cannot be rebuilt
        raise CheckpointError(
            f"{run_dir}/.hydra/config.yaml: the data config cannot be resolved here ({exc})"
        ) from None


def shadow_run_dirs(sweep_dir: str | Path, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Completed and not-completed run directories below a sweep directory (``exclude``, e.g. the target, left out)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise CheckpointError(f"shadow sweep directory not found: {sweep_dir}")
    excluded = exclude.resolve() if exclude is not None else None
    runs = sorted(p.parent for p in sweep_dir.rglob("run.json") if p.parent.resolve() != excluded)
    completed, other = [], []
    for run_dir in runs:
        try:
            read_run(run_dir)
            completed.append(run_dir)
        except CheckpointError:
            other.append(run_dir)
    return completed, other
