"""Membership-inference attack metrics: ROC AUC, TPR at low FPR, and a log-scale ROC plot.

Following Carlini et al., "Membership Inference Attacks From First Principles" (S&P 2022), an attack is
judged by its true-positive rate at a low false-positive rate (1%, 0.1%), read on a log-log ROC curve,
rather than by accuracy or AUC alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve

RocCurve = tuple[np.ndarray, np.ndarray]


def _check(scores: ArrayLike, is_member: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    scores, is_member = np.asarray(scores, dtype=float).ravel(), np.asarray(is_member, dtype=bool).ravel()
    if scores.shape != is_member.shape:
        raise ValueError(f"scores ({scores.shape[0]}) and membership labels ({is_member.shape[0]}) differ in length")
    if is_member.all() or not is_member.any():
        raise ValueError("membership labels need both members and non-members to draw an ROC curve")
    if not np.isfinite(scores).all():
        raise ValueError("attack scores contain NaN or infinity")
    return scores, is_member


def roc(scores: ArrayLike, is_member: ArrayLike) -> RocCurve:
    """``(fpr, tpr)`` of the attack "member iff score >= threshold" over all thresholds."""
    fpr, tpr, _ = roc_curve(*reversed(_check(scores, is_member)))
    return fpr, tpr


def tpr_at_fpr(curve: RocCurve, max_fpr: float) -> float:
    """Highest true-positive rate among thresholds whose false-positive rate is at most ``max_fpr``."""
    fpr, tpr = curve
    allowed = fpr <= max_fpr
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def attack_metrics(scores: ArrayLike, is_member: ArrayLike) -> dict[str, float]:
    """ROC AUC and TPR at 1% and 0.1% FPR of membership scores (higher score = more likely a member)."""
    scores, is_member = _check(scores, is_member)
    curve = roc(scores, is_member)
    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "tpr@1%fpr": tpr_at_fpr(curve, 0.01),
        "tpr@0.1%fpr": tpr_at_fpr(curve, 0.001),
    }


def plot_roc(curves: Mapping[str, RocCurve], path: str | Path, title: str = "Membership inference") -> Path:
    """Write a log-log ROC plot (one line per attack, plus chance) to the PNG ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    floor = 1e-5
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.clip(fpr, floor, 1), np.clip(tpr, floor, 1), label=name)
    ax.plot([floor, 1], [floor, 1], "k--", linewidth=0.8, label="chance")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(floor, 1),
        ylim=(floor, 1),
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        title=title,
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
