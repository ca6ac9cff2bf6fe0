"""Group fairness of a classifier's predictions (Fairlearn ``MetricFrame``): per-group accuracy/F1, DP and EO.

For a protected attribute ``A`` with groups ``g`` and predictions ``Y^``:

- per-group accuracy ``P(Y^ = Y | A = g)``, macro-F1 over the labels present in the group, and counts;
- demographic parity difference of class ``c``:
  ``DP_c = max_g P(Y^ = c | A = g) - min_g P(Y^ = c | A = g)``;
- equalized odds difference of class ``c`` (one-vs-rest: positive = "is ``c``"):
  ``EO_c = max(max_g TPR_c(g) - min_g TPR_c(g), max_g FPR_c(g) - min_g FPR_c(g))``.

Fairlearn's ``demographic_parity_difference`` / ``equalized_odds_difference`` are defined for binary
predictions. For any number of classes this module reports them one-vs-rest per class and their maximum
over classes, ``DP = max_c DP_c`` and ``EO = max_c EO_c``. With two classes both one-vs-rest views give the
same value, so ``DP``/``EO`` equal Fairlearn's binary numbers.

An undefined rate is left out rather than counted as 0: ``TPR_c(g)`` when group ``g`` has no true ``c``,
``FPR_c(g)`` when it has only true ``c``. Fairlearn counts such a rate as 0, so the two agree whenever every
group has both positives and negatives of ``c``. A range over fewer than two defined rates is 0, and
``undefined_rates`` lists what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    false_positive_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, f1_score

from trustml.errors import DataError


def _as_array(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object if isinstance(values, (list, tuple)) else None)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional (one value per example), got shape {arr.shape}")
    missing = pd.isna(pd.Series(arr, dtype=object)).to_numpy()
    if missing.any():
        raise DataError(
            f"{name} has {int(missing.sum())} missing value(s) (first at index {int(np.argmax(missing))}); "
            "drop those examples or fill the value"
        )
    return arr


def check_inputs(y_true: Any, y_pred: Any, protected: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated 1-D arrays: equal lengths, no missing values, at least two protected groups."""
    y_true_a = _as_array(y_true, "y_true")
    y_pred_a = _as_array(y_pred, "y_pred")
    prot = _as_array(protected, "protected attribute")
    if not (len(y_true_a) == len(y_pred_a) == len(prot)):
        raise DataError(
            f"length mismatch: y_true {len(y_true_a)}, y_pred {len(y_pred_a)}, protected attribute {len(prot)}; "
            "pass one value of each per example"
        )
    if len(y_true_a) == 0:
        raise DataError("no examples to measure")
    groups = pd.unique(pd.Series(prot, dtype=object))
    if len(groups) < 2:
        raise DataError(
            f"the protected attribute has a single group ({groups[0]!r}); group metrics compare at least two "
            "groups: check the protected column (or the proxy that derived it)"
        )
    return y_true_a, y_pred_a, prot


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _defined_range(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.max() - values.min()) if len(values) >= 2 else 0.0


def _n_pos(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(np.sum(y_true))


def _n_neg(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(np.sum(~y_true))


def _rates(y_true: np.ndarray, y_pred: np.ndarray, sensitive: pd.Series) -> pd.DataFrame:
    """Per-group TPR and FPR (Fairlearn's) of a binary (bool) problem, NaN where undefined."""
    frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "pos": _n_pos, "neg": _n_neg},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
    ).by_group
    tpr = frame["tpr"].astype(float).where(frame["pos"] > 0)
    fpr = frame["fpr"].astype(float).where(frame["neg"] > 0)
    return pd.DataFrame({"tpr": tpr, "fpr": fpr})


@dataclass
class GroupFairnessReport:
    """Group metrics of one classifier; every number is finite (see the module docstring)."""

    overall: dict[str, float]
    by_group: dict[str, dict[str, float]]
    accuracy_difference: float
    f1_macro_difference: float
    demographic_parity_difference: float
    equalized_odds_difference: float
    dp_by_class: dict[str, float] = field(default_factory=dict)
    eo_by_class: dict[str, float] = field(default_factory=dict)
    undefined_rates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return dict(self.__dict__)


def group_metrics(y_true: Any, y_pred: Any, protected: Any) -> GroupFairnessReport:
    """Per-group accuracy, macro-F1 and counts (``MetricFrame``) and one-vs-rest max DP / EO differences.

    ``y_true``, ``y_pred``: labels of any kind (ints, strings); ``protected``: one group label per example.
    ``DP = max_c [max_g P(Y^=c|g) - min_g P(Y^=c|g)]``; ``EO = max_c max(range_g TPR_c, range_g FPR_c)``
    (ranges over groups where the rate is defined). Raises ``DataError`` for a single group, a length
    mismatch or missing values.
    """
    y_true_a, y_pred_a, prot = check_inputs(y_true, y_pred, protected)
    sensitive = pd.Series(prot, dtype=object, name="group").astype(str)
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "f1_macro": _macro_f1, "count": count},
        y_true=y_true_a,
        y_pred=y_pred_a,
        sensitive_features=sensitive,
    )
    by_group = {
        str(g): {"accuracy": float(row["accuracy"]), "f1_macro": float(row["f1_macro"]), "count": int(row["count"])}
        for g, row in frame.by_group.iterrows()
    }
    overall = {k: float(v) for k, v in frame.overall.items()}
    overall["count"] = int(overall["count"])
    diffs = frame.difference(method="between_groups")

    classes = sorted({str(v) for v in y_true_a} | {str(v) for v in y_pred_a})
    y_true_s = np.array([str(v) for v in y_true_a])
    y_pred_s = np.array([str(v) for v in y_pred_a])
    dp_by_class: dict[str, float] = {}
    eo_by_class: dict[str, float] = {}
    undefined: list[str] = []
    for c in classes:
        t, p = y_true_s == c, y_pred_s == c
        # selection rate P(Y^ = c | g) is defined for every (non-empty) group
        dp_by_class[c] = float(
            demographic_parity_difference(t, p, sensitive_features=sensitive.to_numpy(), method="between_groups")
        )
        rates = _rates(t, p, sensitive)
        undefined += [f"TPR of class {c!r} in group {g!r} (no true {c!r})" for g in rates.index[rates.tpr.isna()]]
        undefined += [f"FPR of class {c!r} in group {g!r} (all true {c!r})" for g in rates.index[rates.fpr.isna()]]
        eo_by_class[c] = max(_defined_range(rates.tpr), _defined_range(rates.fpr))
    return GroupFairnessReport(
        overall=overall,
        by_group=by_group,
        accuracy_difference=float(diffs["accuracy"]),
        f1_macro_difference=float(diffs["f1_macro"]),
        demographic_parity_difference=max(dp_by_class.values()),
        equalized_odds_difference=max(eo_by_class.values()),
        dp_by_class=dp_by_class,
        eo_by_class=eo_by_class,
        undefined_rates=undefined,
    )
