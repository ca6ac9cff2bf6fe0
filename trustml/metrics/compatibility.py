"""Backward compatibility of embeddings (Shen et al., CVPR 2020): cross-model 1-NN retrieval accuracy.

A query embedded by model ``a`` is matched to its nearest gallery item embedded by model ``b``; the
retrieval is correct when that item has the query's label. ``M(a, b)`` is that top-1 accuracy. The new model
is backward compatible with the old one iff ``M(new, old) > M(old, old)``: indexing the gallery with the old
model and querying it with the new one beats the old system, so the gallery needs no re-embedding.
Optionally the old classifier ``(W_old, b_old)`` is also scored on both models' query embeddings (the
accuracy of ``argmax(W_old e + b_old)``): BCT's influence loss trains for exactly that.

For heterogeneous models (Duggal et al., CVPR 2021: a large model embeds the gallery, a small one the queries
on a device), :func:`retrieval_cross_matrix` scores every query model against every gallery model (top-1 and
mAP), and :class:`CrossMatrix` adds each model's size and measured encode time per query
(:func:`count_parameters`, :func:`encode_seconds_per_query`) and their ratios.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
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


# --- heterogeneous models: the query-model x gallery-model cross matrix and the compute of each model ---------
def _scores(query: Tensor, gallery: Tensor, metric: str) -> Tensor:
    """Similarity ``[Q, G]`` (higher = nearer): cosine similarity, or minus the Euclidean distance."""
    if metric == "cosine":
        return F.normalize(query.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T
    return -torch.cdist(query.float(), gallery.float())


def mean_average_precision(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    metric: str = "cosine",
    chunk: int = 512,
) -> float:
    """mAP of retrieval: the mean over queries of ``AP = (1/R) sum_k P@k * rel_k`` over the gallery ranked by
    similarity, with ``R`` the gallery items of the query's label; queries whose label has no gallery item are
    left out of the mean (0.0 when none is left)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be [N, D] of one D")
    gallery_labels = gallery_labels.cpu()
    total, counted = 0.0, 0
    for start in range(0, len(query), chunk):
        q, labels = query[start : start + chunk].cpu(), query_labels[start : start + chunk].cpu()
        order = _scores(q, gallery.cpu(), metric).argsort(dim=1, descending=True, stable=True)
        relevant = (gallery_labels[order] == labels.unsqueeze(1)).float()
        hits = relevant.cumsum(dim=1)
        ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float32)
        per_query = relevant.sum(dim=1)
        ap = (relevant * hits / ranks).sum(dim=1) / per_query.clamp_min(1.0)
        keep = per_query > 0
        total += float(ap[keep].sum())
        counted += int(keep.sum())
    return total / counted if counted else 0.0


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not): the size of the model that encodes."""
    return sum(p.numel() for p in module.parameters())


def encode_seconds_per_query(
    encode: Callable[[Any], Tensor], batches: Sequence[Any], repeats: int = 3, warmup: int = 1
) -> float:
    """Measured wall time of ``encode`` per query: the median over ``repeats`` passes over ``batches`` (after
    ``warmup`` passes), divided by the number of queries in them; under ``torch.no_grad``."""
    import statistics
    import time

    queries = sum(len(b) if not isinstance(b, dict) else len(next(iter(b.values()))) for b in batches)
    if queries == 0:
        raise ValueError("no queries to time")
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            for batch in batches:
                encode(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) / queries


@dataclass
class CrossMatrix:
    """Retrieval of each query model against each gallery model: ``top1[q][g]`` and ``map[q][g]`` (``None`` where
    the two models embed into different dimensions), and each model's ``parameters`` and ``seconds_per_query``.

    ``compatible(q, g)`` is Duggal et al.'s criterion for a cheap query model ``q`` against an expensive gallery
    model ``g``: ``top1[q][g] > top1[q][q]`` (querying the big gallery beats the small model alone).
    """

    metric: str
    top1: dict[str, dict[str, float | None]]
    map: dict[str, dict[str, float | None]]
    parameters: dict[str, int] = field(default_factory=dict)
    seconds_per_query: dict[str, float] = field(default_factory=dict)

    def compatible(self, query_model: str, gallery_model: str) -> bool:
        """Whether ``query_model``'s queries against ``gallery_model``'s gallery beat ``query_model`` alone."""
        cross, own = self.top1[query_model][gallery_model], self.top1[query_model][query_model]
        return cross is not None and own is not None and cross > own

    def compute_ratio(self, query_model: str, gallery_model: str) -> dict[str, float | None]:
        """``gallery / query`` parameters and encode time per query: how much cheaper the query model is."""
        params = self.parameters.get(query_model), self.parameters.get(gallery_model)
        times = self.seconds_per_query.get(query_model), self.seconds_per_query.get(gallery_model)
        return {
            "parameters": params[1] / params[0] if params[0] and params[1] else None,
            "encode_time": times[1] / times[0] if times[0] and times[1] else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the compute ratio of every pair."""
        pairs = {f"{q}->{g}": self.compute_ratio(q, g) for q in self.top1 for g in self.top1[q] if q != g}
        return {**asdict(self), "compute_ratio": pairs}

    def to_markdown(self) -> str:
        """Two tables (rows: query model, columns: gallery model): top-1 and mAP in %, then the compute table."""
        galleries = list(next(iter(self.top1.values())))

        def cell(value: float | None) -> str:
            return "—" if value is None else f"{100 * value:.2f}"

        lines = []
        for name, table in (("top-1 %", self.top1), ("mAP %", self.map)):
            lines += [
                f"| query \\ gallery ({name}) | " + " | ".join(galleries) + " |",
                "|---" * (len(galleries) + 1) + "|",
            ]
            lines += [f"| {q} | " + " | ".join(cell(table[q][g]) for g in galleries) + " |" for q in table]
            lines.append("")
        if self.parameters:
            lines += ["| model | parameters | encode ms / query |", "|---|---|---|"]
            for model, count in self.parameters.items():
                seconds = self.seconds_per_query.get(model)
                lines.append(f"| {model} | {count:,} | {'—' if seconds is None else f'{1000 * seconds:.3f}'} |")
        return "\n".join(lines) + "\n"


def retrieval_cross_matrix(
    queries: Mapping[str, Tensor],
    galleries: Mapping[str, Tensor],
    query_labels: Tensor,
    gallery_labels: Tensor,
    metric: str = "cosine",
    parameters: Mapping[str, int] | None = None,
    seconds_per_query: Mapping[str, float] | None = None,
) -> CrossMatrix:
    """The cross matrix of every query model's embeddings (``queries[name]``) against every gallery model's
    (``galleries[name]``): top-1 by :func:`nearest_neighbor_accuracy` and :func:`mean_average_precision`.

    The diagonal ``top1[m][m]`` is model ``m``'s own retrieval accuracy. Pairs of different widths get ``None``.
    """
    top1: dict[str, dict[str, float | None]] = {}
    average_precision: dict[str, dict[str, float | None]] = {}
    for q, query in queries.items():
        top1[q], average_precision[q] = {}, {}
        for g, gallery in galleries.items():
            if query.shape[1] != gallery.shape[1]:
                top1[q][g] = average_precision[q][g] = None
                continue
            top1[q][g] = nearest_neighbor_accuracy(query, query_labels, gallery, gallery_labels, metric)
            average_precision[q][g] = mean_average_precision(query, query_labels, gallery, gallery_labels, metric)
    return CrossMatrix(
        metric=metric,
        top1=top1,
        map=average_precision,
        parameters=dict(parameters or {}),
        seconds_per_query=dict(seconds_per_query or {}),
    )
