"""Membership-inference audit of a finished run: LOSS attack and offline LiRA with shadow runs of a sweep.

Candidates are the training and test samples of the target's data (the full training split, whatever
subset the target trained on); a candidate is a member when the target trained on it. Shadow runs come
from a sweep trained with ``data.train_subset_fraction=0.5 data.train_subset_seed=...``: each shadow's
membership follows from its own data config. Offline LiRA scores a candidate only when at least two shadow
runs did not train on it (the Gaussian "out" fit needs two points); the audit reports how many it scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustml.errors import CheckpointError, ConfigError
from trustml.privacy.audit.membership import lira_offline_scores, logit_scaled_confidence, loss_attack_scores
from trustml.privacy.audit.metrics import RocCurve, attack_metrics, plot_roc, roc
from trustml.privacy.audit.runs import (
    AuditedRun,
    build_datamodule,
    check_same_data,
    checkpoint_test_accuracy,
    load_audited_run,
    run_config,
    shadow_run_dirs,
)
from trustml.privacy.audit.scoring import logits_on_splits, per_example_losses
from trustml.run_record import read_run, write_json_atomic

CANDIDATE_SPLITS = ("train", "test")


@dataclass
class Candidates:
    """The audited samples: ids, labels and the splits they come from (in that order)."""

    ids: np.ndarray
    labels: torch.Tensor
    splits: list[Any] = field(repr=False)


def candidate_samples(target: AuditedRun, trusted_prefixes: list[str]) -> Candidates:
    """Training (all of it, not only the target's subset) and test samples of the target's data."""
    datamodule = build_datamodule(target.data_cfg, trusted_prefixes, train_subset_fraction=1.0)
    if datamodule.label_names != target.label_names:
        raise ConfigError(
            f"the data of {target.run_dir} now has labels {datamodule.label_names} but the model was trained on "
            f"{target.label_names}; the data files changed since the run"
        )
    splits = [datamodule.splits[name] for name in CANDIDATE_SPLITS]
    return Candidates(
        ids=torch.cat([s.index for s in splits]).numpy(),
        labels=torch.cat([s.labels for s in splits]),
        splits=splits,
    )


def _confidences(run: AuditedRun, candidates: Candidates, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits_on_splits(run.model, candidates.splits, batch_size)
    return per_example_losses(logits, candidates.labels), logit_scaled_confidence(logits, candidates.labels)


def lira_offline(
    target_confidence: np.ndarray, shadow_confidence: np.ndarray, shadow_in: np.ndarray, fix_variance: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Offline LiRA scores of the candidates with at least two "out" shadows, and the mask of those candidates."""
    scored = (~shadow_in).sum(0) >= 2
    if not scored.any():
        raise ConfigError("no candidate has two shadow runs that did not train on it; train more shadow runs")
    scores = lira_offline_scores(
        target_confidence[scored], shadow_confidence[:, scored], shadow_in[:, scored], fix_variance=fix_variance
    )
    return scores, scored


def audit_membership(
    target_dir: str | Path,
    out_dir: str | Path,
    shadow_dir: str | Path | None = None,
    checkpoint: str = "best",
    fix_variance: bool = True,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Run the LOSS attack (and offline LiRA when ``shadow_dir`` is given) on a finished run.

    Writes ``audit.json`` (per attack: ROC AUC, TPR at 1% and 0.1% FPR, number of audited candidates; the
    attacked checkpoint's test accuracy ``test_acc``, recomputed here since ``results.json`` holds the best
    checkpoint's) and ``roc.png`` (log-scale ROC curves) into ``out_dir`` and returns the ``audit.json`` content.
    """
    target_dir = Path(target_dir)
    record = read_run(target_dir)
    trusted = list(record.get("trusted_target_prefixes") or [])
    target = load_audited_run(target_dir, checkpoint)
    candidates = candidate_samples(target, trusted)
    is_member = np.isin(candidates.ids, target.train_ids)
    losses, confidence = _confidences(target, candidates, batch_size)

    curves: dict[str, RocCurve] = {}
    scores = loss_attack_scores(losses.numpy())
    attacks = {"loss": {**attack_metrics(scores, is_member), "num_candidates": int(is_member.size)}}
    curves["LOSS"] = roc(scores, is_member)
    result: dict[str, Any] = {
        "target": str(target_dir),
        "checkpoint": checkpoint,
        **checkpoint_test_accuracy(target, batch_size),
        "num_candidates": int(is_member.size),
        "num_members": int(is_member.sum()),
        "attacks": attacks,
    }

    if shadow_dir is not None:
        shadow_dirs, skipped = shadow_run_dirs(shadow_dir, exclude=target_dir)
        if len(shadow_dirs) < 2:
            raise CheckpointError(
                f"{shadow_dir} holds {len(shadow_dirs)} completed shadow run(s); LiRA needs at least 2 (a sweep "
                f"trustml -m data.train_subset_fraction=0.5 data.train_subset_seed=0,1,2,3 ...)"
            )
        target_cfg = run_config(target_dir).data
        shadow_conf, shadow_in = [], []
        for run_dir in shadow_dirs:
            check_same_data(target_cfg, run_config(run_dir).data, target_dir, run_dir)
            shadow = load_audited_run(run_dir, checkpoint)
            if shadow.label_names != target.label_names:
                raise ConfigError(
                    f"shadow run {run_dir} has labels {shadow.label_names}, the target {target.label_names}"
                )
            shadow_conf.append(_confidences(shadow, candidates, batch_size)[1].numpy())
            shadow_in.append(np.isin(candidates.ids, shadow.train_ids))
        lira, scored = lira_offline(confidence.numpy(), np.stack(shadow_conf), np.stack(shadow_in), fix_variance)
        attacks["lira_offline"] = {**attack_metrics(lira, is_member[scored]), "num_candidates": int(scored.sum())}
        curves["LiRA (offline)"] = roc(lira, is_member[scored])
        result["shadow_runs"] = [str(p) for p in shadow_dirs]
        result["shadow_runs_skipped"] = [str(p) for p in skipped]
        result["lira_fix_variance"] = fix_variance

    out_dir = Path(out_dir)
    result["roc_plot"] = str(plot_roc(curves, out_dir / "roc.png"))
    write_json_atomic(out_dir / "audit.json", result)
    return result
