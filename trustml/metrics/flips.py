"""Regression metrics of a model update, as pure functions of predictions (Yan et al., CVPR 2021).

With ``N`` samples, labels ``y``, old predictions ``o`` and new predictions ``n``:

- error rate ``ER = (1/N) sum_i 1[pred_i != y_i]`` (of the old and of the new model);
- negative flip rate ``NFR = (1/N) sum_i 1[o_i = y_i and n_i != y_i]`` (over *all* samples);
- relative NFR ``NFR / ((1 - ER_old) * ER_new)``: NFR against what independent errors would give;
- negative flip impact ``NFI = NFR / ER_new``: the share of the new model's errors that are regressions;
- positive flip rate ``PFR = (1/N) sum_i 1[o_i != y_i and n_i = y_i]``.

A ratio whose denominator is zero has a zero numerator too (no new errors, or no old successes, means no
negative flips); it is reported as 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def as_predictions(scores_or_labels: Tensor) -> Tensor:
    """Class predictions: the argmax of ``[N, C]`` scores, or ``[N]`` labels unchanged."""
    if scores_or_labels.ndim == 2:
        return scores_or_labels.argmax(dim=-1)
    if scores_or_labels.ndim == 1:
        return scores_or_labels
    raise ValueError(f"predictions must be [N] labels or [N, C] scores, got shape {tuple(scores_or_labels.shape)}")


def _check_shapes(old: Tensor, new: Tensor, target: Tensor) -> None:
    if not (old.shape == new.shape == target.shape):
        raise ValueError(
            f"old predictions {tuple(old.shape)}, new predictions {tuple(new.shape)} and targets "
            f"{tuple(target.shape)} must have the same number of samples"
        )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


@dataclass(frozen=True)
class FlipCounts:
    """Sample counts from which every flip metric follows."""

    total: int
    old_errors: int
    new_errors: int
    negative_flips: int
    positive_flips: int

    def rates(self) -> dict[str, float]:
        """``er_old``, ``er_new``, ``nfr``, ``relative_nfr``, ``nfi`` and ``pfr`` (see the module docstring)."""
        n = self.total
        er_old = _ratio(self.old_errors, n)
        er_new = _ratio(self.new_errors, n)
        nfr = _ratio(self.negative_flips, n)
        return {
            "er_old": er_old,
            "er_new": er_new,
            "nfr": nfr,
            "relative_nfr": _ratio(nfr, (1.0 - er_old) * er_new),
            "nfi": _ratio(nfr, er_new),
            "pfr": _ratio(self.positive_flips, n),
        }

    def to_dict(self) -> dict[str, int]:
        """The counts as a JSON-ready dict."""
        return asdict(self)


def flip_counts(old: Tensor, new: Tensor, target: Tensor) -> FlipCounts:
    """Count errors and flips of an update from ``old`` to ``new`` predictions (labels or scores)."""
    old, new = as_predictions(old), as_predictions(new)
    _check_shapes(old, new, target)
    old_right, new_right = old == target, new == target
    return FlipCounts(
        total=int(target.numel()),
        old_errors=int((~old_right).sum()),
        new_errors=int((~new_right).sum()),
        negative_flips=int((old_right & ~new_right).sum()),
        positive_flips=int((~old_right & new_right).sum()),
    )


def error_rate(predictions: Tensor, target: Tensor) -> float:
    """``ER = (1/N) sum_i 1[pred_i != y_i]`` for labels or ``[N, C]`` scores."""
    predictions = as_predictions(predictions)
    if predictions.shape != target.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(target.shape)} differ in shape")
    return _ratio(float((predictions != target).sum()), target.numel())


def negative_flip_rate(old: Tensor, new: Tensor, target: Tensor) -> float:
    """``NFR``: fraction of all samples the old model gets right and the new gets wrong."""
    return flip_counts(old, new, target).rates()["nfr"]


def relative_negative_flip_rate(old: Tensor, new: Tensor, target: Tensor) -> float:
    """Relative NFR ``= NFR / ((1 - ER_old) * ER_new)``."""
    return flip_counts(old, new, target).rates()["relative_nfr"]


def negative_flip_impact(old: Tensor, new: Tensor, target: Tensor) -> float:
    """``NFI = NFR / ER_new``."""
    return flip_counts(old, new, target).rates()["nfi"]


def positive_flip_rate(old: Tensor, new: Tensor, target: Tensor) -> float:
    """``PFR``: fraction of all samples the old model gets wrong and the new gets right."""
    return flip_counts(old, new, target).rates()["pfr"]


def flip_masks(old: Tensor, new: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean ``[N]`` masks of the negative flips and of the positive flips."""
    old, new = as_predictions(old), as_predictions(new)
    _check_shapes(old, new, target)
    old_right, new_right = old == target, new == target
    return old_right & ~new_right, ~old_right & new_right


def per_class_counts(labels: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """Per-class counts of the samples selected by each mask, e.g. flips per true class.

    ``masks`` is ``[N]`` or ``[M, N]`` booleans over the ``N`` samples; the result is ``[num_classes]`` or
    ``[M, num_classes]`` (one ``bincount`` for all masks).
    """
    if labels.numel():
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(low)}, {int(high)}]")
    stacked = masks.reshape(-1, labels.numel())
    rows = torch.arange(stacked.shape[0], device=labels.device).unsqueeze(1)
    codes = (rows * num_classes + labels.unsqueeze(0))[stacked]
    counts = torch.bincount(codes, minlength=stacked.shape[0] * num_classes).view(-1, num_classes)
    return counts if masks.ndim == 2 else counts[0]
