"""Backward compatibility of embeddings (Shen et al., CVPR 2020): cross-model 1-NN retrieval accuracy.

A query embedded by model ``a`` is matched to its nearest gallery item embedded by model ``b``; the
retrieval is correct when that item has the query's label. ``M(a, b)`` is that top-1 accuracy. The new model
is backward compatible with the old one iff ``M(new, old) > M(old, old)``: indexing the gallery with the old
model and querying it with the new one beats the old system, so the gallery needs no re-embedding.
Optionally the old classifier ``(W_old, b_old)`` is also scored on both models' query embeddings (the
accuracy of ``argmax(W_old e + b_old)``): BCT's influence loss trains for exactly that.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch import Tensor

METRICS = ("cosine", "euclidean")


def nearest_neighbor_accuracy(
    query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, metric: str = "cosine"
) -> float:
    """Top-1 retrieval accuracy: fraction of queries whose nearest gallery embedding has the same label."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be [N, D] embeddings of one "
            "dimension D; cross-model retrieval needs the new model's embedding size to equal the old one's"
        )
    if query.shape[0] != query_labels.shape[0] or gallery.shape[0] != gallery_labels.shape[0]:
        raise ValueError("each embedding needs one label")
    knn = KNeighborsClassifier(n_neighbors=1, metric=metric, algorithm="brute")
    knn.fit(gallery.detach().float().cpu().numpy(), gallery_labels.cpu().numpy())
    return float(knn.score(query.detach().float().cpu().numpy(), query_labels.cpu().numpy()))


def linear_classifier_accuracy(embeddings: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> float:
    """Accuracy of ``argmax(W e + b)`` on ``embeddings``: how well a (frozen) linear head reads them."""
    if embeddings.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"embeddings of width {embeddings.shape[-1]} cannot go through a head expecting {weight.shape[1]}"
        )
    predictions = F.linear(embeddings.float(), weight.float(), bias.float()).argmax(dim=-1)
    return float((predictions == labels.to(predictions.device)).float().mean())


@dataclass(frozen=True)
class CompatibilityReport:
    """1-NN accuracies of the three query/gallery pairings and the verdict ``new_old > old_old``.

    ``old_head_new`` / ``old_head_old``: accuracy of the old classifier on new / old query embeddings
    (``None`` when no classifier was given).
    """

    new_old: float
    old_old: float
    new_new: float
    metric: str
    old_head_new: float | None = None
    old_head_old: float | None = None

    @property
    def compatible(self) -> bool:
        """True iff new-model queries against the old-model gallery beat the old model alone."""
        return self.new_old > self.old_old

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the accuracies, the distance and the verdict."""
        return {**asdict(self), "compatible": self.compatible}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def compatibility_report(
    old_query: Tensor,
    new_query: Tensor,
    query_labels: Tensor,
    old_gallery: Tensor,
    new_gallery: Tensor,
    gallery_labels: Tensor,
    metric: str = "cosine",
    old_head: tuple[Tensor, Tensor] | None = None,
) -> CompatibilityReport:
    """Evaluate new-vs-old, old-vs-old and new-vs-new 1-NN retrieval (queries first, gallery second).

    With ``old_head = (W_old, b_old)`` the old classifier is also scored on both query embeddings.
    """
    head_scores: dict[str, float] = {}
    if old_head is not None:
        head_scores = {
            "old_head_new": linear_classifier_accuracy(new_query, query_labels, *old_head),
            "old_head_old": linear_classifier_accuracy(old_query, query_labels, *old_head),
        }
    return CompatibilityReport(
        new_old=nearest_neighbor_accuracy(new_query, query_labels, old_gallery, gallery_labels, metric),
        old_old=nearest_neighbor_accuracy(old_query, query_labels, old_gallery, gallery_labels, metric),
        new_new=nearest_neighbor_accuracy(new_query, query_labels, new_gallery, gallery_labels, metric),
        metric=metric,
        **head_scores,
    )
