"""Flip metrics accumulated over batches (a ``torchmetrics.Metric``) and the JSON flip report they produce."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from trustml.metrics.flips import FlipCounts, as_predictions, flip_masks, per_class_counts


@dataclass(frozen=True)
class ClassFlips:
    """Errors and flips among the samples whose true label is one class."""

    label: int
    name: str
    support: int
    old_errors: int
    new_errors: int
    negative_flips: int
    positive_flips: int


@dataclass(frozen=True)
class FlipReport:
    """What changed between an old and a new model on one data split: rates, per-class flips, flipped ids."""

    counts: FlipCounts
    per_class: list[ClassFlips]
    negative_flip_ids: list[int]
    positive_flip_ids: list[int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``rates``, ``counts``, ``per_class`` and the sorted flipped sample ids."""
        return {
            "rates": self.counts.rates(),
            "counts": self.counts.to_dict(),
            "per_class": [asdict(c) for c in self.per_class],
            "negative_flip_ids": self.negative_flip_ids,
            "positive_flip_ids": self.positive_flip_ids,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


class FlipMetrics(Metric):
    """Error rates of old and new model, NFR, relative NFR, NFI and PFR over all updates since the last reset.

    ``update(old, new, target, index=None)`` takes old and new predictions (``[B]`` labels or ``[B, C]``
    logits), the true labels and optionally the samples' ids (default: their running position).
    ``compute()`` returns the rates of :meth:`trustml.metrics.flips.FlipCounts.rates` as 0-d tensors;
    :meth:`report` gives the per-class breakdown and the flipped ids.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    _COUNTS = ("old_errors", "new_errors", "negative_flips", "positive_flips")

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("class_support", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        for name in self._COUNTS:
            self.add_state(f"class_{name}", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("negative_flip_ids", default=[], dist_reduce_fx="cat")
        self.add_state("positive_flip_ids", default=[], dist_reduce_fx="cat")

    def update(self, old: Tensor, new: Tensor, target: Tensor, index: Tensor | None = None) -> None:
        """Add one batch of old/new predictions (labels or logits), labels and optional sample ids."""
        old, new = as_predictions(old), as_predictions(new)
        negative, positive = flip_masks(old, new, target)
        if index is None:
            index = self.total + torch.arange(target.numel(), device=target.device)
        elif index.shape != target.shape:
            raise ValueError(f"index {tuple(index.shape)} must have the shape of the targets {tuple(target.shape)}")
        everything = torch.ones_like(target, dtype=torch.bool)
        masks = torch.stack([everything, old != target, new != target, negative, positive])
        support, old_errors, new_errors, negative_flips, positive_flips = per_class_counts(
            target, masks, self.num_classes
        )
        self.total += target.numel()
        self.class_support += support
        self.class_old_errors += old_errors
        self.class_new_errors += new_errors
        self.class_negative_flips += negative_flips
        self.class_positive_flips += positive_flips
        self.negative_flip_ids.append(index[negative].long())
        self.positive_flip_ids.append(index[positive].long())

    def counts(self) -> FlipCounts:
        """The accumulated :class:`FlipCounts`."""
        return FlipCounts(
            total=int(self.total),
            **{name: int(getattr(self, f"class_{name}").sum()) for name in self._COUNTS},
        )

    def compute(self) -> dict[str, Tensor]:
        """``er_old``, ``er_new``, ``nfr``, ``relative_nfr``, ``nfi``, ``pfr`` as float tensors."""
        return {name: torch.tensor(value) for name, value in self.counts().rates().items()}

    def report(self, class_names: Sequence[str] | None = None) -> FlipReport:
        """The :class:`FlipReport` of everything accumulated; ``class_names`` label the per-class rows."""
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.num_classes} classes")
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        per_class = [
            ClassFlips(
                label=c,
                name=names[c],
                support=int(self.class_support[c]),
                **{name: int(getattr(self, f"class_{name}")[c]) for name in self._COUNTS},
            )
            for c in range(self.num_classes)
        ]
        return FlipReport(
            counts=self.counts(),
            per_class=per_class,
            negative_flip_ids=_sorted_ids(self.negative_flip_ids),
            positive_flip_ids=_sorted_ids(self.positive_flip_ids),
        )


def _sorted_ids(ids: list[Tensor] | Tensor) -> list[int]:
    if isinstance(ids, list) and not ids:
        return []
    return torch.sort(dim_zero_cat(ids).cpu()).values.tolist()


def flip_report(
    old: Tensor,
    new: Tensor,
    target: Tensor,
    num_classes: int,
    index: Tensor | None = None,
    class_names: Sequence[str] | None = None,
) -> FlipReport:
    """The :class:`FlipReport` of one set of old/new predictions (labels or logits) in a single call."""
    metric = FlipMetrics(num_classes=num_classes)
    metric.update(old, new, target, index)
    return metric.report(class_names)
