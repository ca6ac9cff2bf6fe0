"""Partitioners: which training samples live on which client, as pure functions of labels or group columns.

Each partitioner returns a :class:`Segments` (a sequence of ``np.ndarray``): entry ``k`` holds the positions (into
the training split) of client ``k``'s samples, in ascending order. It is stored CSR-style (one flat array of
positions and each client's start and end in it), so a population of a million devices costs a few arrays rather
than a million Python objects; a client's rows are a view made when asked for (when it is selected). Every position
is assigned to exactly one client. Random partitioners draw only from the ``numpy.random.Generator`` they are given,
so a seed fixes the partition. Clients may be empty under strong skew; the statistics report them and client
selection skips them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, overload

import numpy as np

from trustml.errors import ConfigError


class Segments(Sequence[np.ndarray]):
    """Every client's rows in one flat array: client ``k`` holds ``rows[starts[k]:ends[k]]`` (CSR layout).

    ``segments[k]`` is that slice (a view, made on demand); ``sizes`` is ``ends - starts`` without touching the
    clients one by one. Memory is ``rows`` plus two int64 entries per client, whatever the number of clients.
    """

    __slots__ = ("ends", "rows", "starts")

    def __init__(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)

    @classmethod
    def from_owner(cls, owner: np.ndarray, num_clients: int) -> Segments:
        """Positions grouped by ``owner[position]`` (client id), each group in ascending position order."""
        order = np.argsort(owner, kind="stable")
        offsets = np.zeros(num_clients + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=num_clients), out=offsets[1:])
        return cls(order, offsets[:-1], offsets[1:])

    @classmethod
    def of(cls, parts: Sequence[np.ndarray]) -> Segments:
        """``parts`` as segments (itself when it already is one; a list of arrays is copied into one array)."""
        if isinstance(parts, Segments):
            return parts
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        rows = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if len(parts) else np.zeros(0, np.int64)
        return cls(rows, offsets[:-1], offsets[1:])

    @property
    def sizes(self) -> np.ndarray:
        """Number of rows of every client (int64)."""
        return self.ends - self.starts

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> Segments: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | Segments:
        if isinstance(index, slice):
            return Segments(self.rows, self.starts[index], self.ends[index])
        return self.rows[self.starts[index] : self.ends[index]]

    def __iter__(self) -> Iterator[np.ndarray]:
        rows = self.rows
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield rows[start:end]

    def __repr__(self) -> str:
        return f"Segments({len(self)} clients, {len(self.rows)} rows)"


Partition = Segments

PARTITIONERS = ("iid", "dirichlet_label", "dirichlet_quantity", "natural", "heavy_tailed", "heavy_tailed_natural")
#: distributions of the device weights of the heavy-tailed partitioners
HEAVY_TAILS = ("lognormal", "zipf")


def _check_num_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"federation.partition.num_clients must be at least 1, got {num_clients}")


def _split_by_owner(owner: np.ndarray, num_clients: int) -> Partition:
    """Positions grouped by ``owner[position]`` (client id), each group in ascending position order."""
    return Segments.from_owner(owner, num_clients)


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> Partition:
    """Shuffle the samples and deal them into ``num_clients`` parts whose sizes differ by at most one."""
    _check_num_clients(num_clients)
    owner = np.empty(num_samples, dtype=np.int64)
    owner[rng.permutation(num_samples)] = np.arange(num_samples) % num_clients
    return _split_by_owner(owner, num_clients)


def dirichlet_label_partition(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> Partition:
    """Label skew (Hsu et al. 2019): for each class ``c`` draw ``p_c ~ Dir(alpha * 1_M)`` and give client ``k``
    a fraction ``p_c[k]`` of class ``c``'s samples. Small ``alpha`` gives clients few classes; large ``alpha``
    approaches the IID split."""
    _check_num_clients(num_clients)
    if alpha <= 0:
        raise ConfigError(f"federation.partition.dirichlet_alpha must be positive, got {alpha}")
    labels = np.asarray(labels)
    owner = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        counts = np.diff(np.concatenate(([0], cuts, [len(members)])))
        owner[members] = np.repeat(np.arange(num_clients), counts)
    return _split_by_owner(owner, num_clients)


def dirichlet_quantity_partition(
    num_samples: int, num_clients: int, beta: float, rng: np.random.Generator
) -> Partition:
    """Quantity skew: client sizes proportional to ``q ~ Dir(beta * 1_M)``, samples dealt at random (labels
    IID). Small ``beta`` gives a few heavy clients and many light ones."""
    _check_num_clients(num_clients)
    if beta <= 0:
        raise ConfigError(f"federation.partition.quantity_beta must be positive, got {beta}")
    shares = rng.dirichlet(np.full(num_clients, beta))
    cuts = np.round(np.cumsum(shares)[:-1] * num_samples).astype(np.int64)
    counts = np.diff(np.concatenate(([0], cuts, [num_samples])))
    owner = np.empty(num_samples, dtype=np.int64)
    owner[rng.permutation(num_samples)] = np.repeat(np.arange(num_clients), counts)
    return _split_by_owner(owner, num_clients)


def heavy_tailed_weights(num_clients: int, tail: str, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Device weights ``w_k`` (summing to 1) with a heavy tail, the share of the data each device gets.

    ``lognormal``: ``w_k ∝ exp(skew * z_k)``, ``z_k ~ N(0, 1)`` (``skew`` is the log-normal's sigma; 0 gives equal
    weights). ``zipf``: ``w_k ∝ r_k^(-skew)`` for a random ranking ``r`` of the devices (a power law in the rank:
    the ``r``-th heaviest device holds ``r^-skew`` times the heaviest's data).
    """
    _check_num_clients(num_clients)
    if skew < 0:
        raise ConfigError(f"federation.partition.skew must be >= 0, got {skew}")
    if tail == "lognormal":
        weights = np.exp(skew * rng.standard_normal(num_clients))
    elif tail == "zipf":
        weights = rng.permutation(np.arange(1, num_clients + 1, dtype=np.float64)) ** -skew
    else:
        raise ConfigError(f"federation.partition.heavy_tail must be one of {list(HEAVY_TAILS)}, got '{tail}'")
    return weights / weights.sum()


def heavy_tailed_partition(
    num_samples: int, num_clients: int, tail: str, skew: float, rng: np.random.Generator
) -> Partition:
    """Heavy-tailed device activity over IID samples: device ``k`` gets ``1 + round(w_k (N - M))`` samples (every
    device holds at least one; the weights ``w`` of :func:`heavy_tailed_weights`), dealt at random (labels IID).

    A few heavy devices hold much of the data and most devices are light, as on real devices (Dupuy et al. 2022).
    """
    _check_num_clients(num_clients)
    if num_clients > num_samples:
        raise ConfigError(
            f"federation.partition.num_clients={num_clients} exceeds the {num_samples} training samples; every device "
            f"of a heavy_tailed partition holds at least one, so lower num_clients to at most {num_samples}"
        )
    weights = heavy_tailed_weights(num_clients, tail, skew, rng)
    spare = num_samples - num_clients
    cuts = np.round(np.cumsum(weights)[:-1] * spare).astype(np.int64)
    counts = 1 + np.diff(np.concatenate(([0], cuts, [spare])))
    owner = np.empty(num_samples, dtype=np.int64)
    owner[rng.permutation(num_samples)] = np.repeat(np.arange(num_clients), counts)
    return _split_by_owner(owner, num_clients)


def heavy_tailed_natural_partition(
    groups: np.ndarray, num_clients: int, tail: str, skew: float, rng: np.random.Generator
) -> Partition:
    """Heavy-tailed devices on top of a natural partition: each natural group (e.g. a conversation) goes whole to
    device ``k`` with probability ``w_k`` (:func:`heavy_tailed_weights`), so heavy devices hold many groups and light
    ones few or none (empty devices are reported and never selected); a group's samples stay together."""
    _check_num_clients(num_clients)
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    weights = heavy_tailed_weights(num_clients, tail, skew, rng)
    device_of_group = rng.choice(num_clients, size=int(inverse.max(initial=-1)) + 1, p=weights)
    return _split_by_owner(device_of_group[inverse], num_clients)


def size_skew(sizes: np.ndarray) -> dict[str, float]:
    """How unequal the devices' sample counts ``x`` are: the Gini coefficient
    ``G = sum_i sum_j |x_i - x_j| / (2 M^2 mean(x))`` (0: equal; near 1: one device holds everything), computed as
    ``(2 sum_i i x_(i)) / (M sum x) - (M + 1) / M`` over the ascending order, and the share of all samples held by
    the top 10% of devices (the ``ceil(M / 10)`` largest)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    m, total = len(x), float(x.sum())
    if m == 0 or total == 0:
        return {"gini": 0.0, "top10_share": 0.0}
    gini = float(2.0 * np.dot(np.arange(1, m + 1), x) / (m * total) - (m + 1) / m)
    top = int(np.ceil(m / 10))
    return {"gini": gini, "top10_share": float(x[-top:].sum() / total)}


def natural_partition(groups: np.ndarray) -> tuple[Partition, list[str]]:
    """One client per distinct value of a data column (e.g. a Topical-Chat conversation or agent).

    Returns the partition and each client's group value (as a string), clients ordered by the group's
    first appearance in the data so that client ids are stable under relabeling.
    """
    groups = np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    owner = rank[inverse.reshape(-1)]
    names = [str(groups[i]) for i in np.sort(first)]
    return _split_by_owner(owner, len(first)), names


def label_entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy ``H = -sum_c p_c log2 p_c`` of each row of a ``[clients, classes]`` count matrix
    (0 for an empty client)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1)


#: populations up to this many clients list every client in the statistics (``clients``); larger ones only summarize
#: (the per-client arrays go to a compact file instead, see :func:`client_arrays`)
LISTED_CLIENTS = 1000


@dataclass(frozen=True)
class LabelCounts:
    """Every client's label counts in sparse form: the non-zero ``(client, label, count)`` triples, sorted by client
    then label (at most one per training row, so O(rows) memory rather than ``clients x classes``)."""

    client: np.ndarray
    label: np.ndarray
    count: np.ndarray
    num_clients: int
    num_classes: int

    @classmethod
    def of(cls, labels: np.ndarray, partition: Partition, num_classes: int) -> LabelCounts:
        """From the labels of the training split and the partition (one ``np.unique`` over ``client * C + y``)."""
        parts = Segments.of(partition)
        owner = np.repeat(np.arange(len(parts), dtype=np.int64), parts.sizes)
        keys, count = np.unique(
            owner * num_classes + np.asarray(labels)[parts.rows[gather_index(parts)]], return_counts=True
        )
        return cls(keys // num_classes, keys % num_classes, count, len(parts), num_classes)

    def dense(self, clients: np.ndarray | None = None) -> np.ndarray:
        """The ``[clients, classes]`` count matrix (int64), of the given ``clients`` only when given."""
        if clients is None:
            clients = np.arange(self.num_clients)
        where = np.full(self.num_clients, -1, dtype=np.int64)
        where[clients] = np.arange(len(clients))
        matrix = np.zeros((len(clients), self.num_classes), dtype=np.int64)
        keep = where[self.client] >= 0
        matrix[where[self.client[keep]], self.label[keep]] = self.count[keep]
        return matrix

    @cached_property
    def entropy_bits(self) -> np.ndarray:
        """Every client's label entropy ``H = -sum_c p_c log2 p_c`` (0 for an empty client), as
        :func:`label_entropy_bits` of :meth:`dense`, summed over the non-zero counts only."""
        totals = np.bincount(self.client, weights=self.count, minlength=self.num_clients)
        p = self.count / totals[self.client] if len(self.count) else np.zeros(0)
        return np.bincount(self.client, weights=-p * np.log2(p), minlength=self.num_clients) + 0.0


def gather_index(parts: Segments) -> np.ndarray:
    """Positions in ``parts.rows`` of every client's rows, client after client (``np.concatenate(list(parts))``
    equals ``parts.rows[gather_index(parts)]``), without a Python loop over the clients."""
    sizes = parts.sizes
    packed = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=packed[1:])
    return np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(parts.starts - packed, sizes)


def size_histogram(sizes: np.ndarray) -> dict[str, list[int]]:
    """How many clients hold 0, 1, 2-3, 4-7, ... samples: ``clients[i]`` counts the clients with ``lower[i] <= n <
    lower[i + 1]`` (power-of-two bins; the last bin is open)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    top = int(sizes.max(initial=0))
    lower = [0, 1] + [2**i for i in range(1, max(top, 1).bit_length())]
    bins = np.searchsorted(np.array(lower), sizes, side="right") - 1
    return {"lower": lower, "clients": np.bincount(bins, minlength=len(lower)).tolist()}


def partition_statistics(
    labels: np.ndarray,
    partition: Partition,
    num_classes: int,
    client_names: list[str] | None = None,
    *,
    list_clients: bool | None = None,
    counts: LabelCounts | None = None,
) -> dict[str, Any]:
    """Samples per client and label entropy (bits): their summaries (min/median/mean/max, Gini, top-10% share, a
    histogram of the sizes), as JSON; with ``list_clients`` (default: at most :data:`LISTED_CLIENTS` clients) also
    every client's samples, label counts and entropy under ``clients`` (``counts``: :func:`label_counts_of` computed
    before)."""
    parts = Segments.of(partition)
    counts = counts if counts is not None else label_counts_of(labels, parts, num_classes)
    num_classes = counts.num_classes
    sizes = parts.sizes
    entropy = counts.entropy_bits
    nonempty = sizes > 0
    stats: dict[str, Any] = {
        "num_clients": len(parts),
        "num_samples": int(sizes.sum()),
        "empty_clients": int((~nonempty).sum()),
        "samples_per_client": {
            "min": int(sizes.min(initial=0)),
            "median": float(np.median(sizes)) if len(sizes) else 0.0,
            "mean": float(sizes.mean()) if len(sizes) else 0.0,
            "max": int(sizes.max(initial=0)),
            **size_skew(sizes),
        },
        "label_entropy_bits": {
            "mean": float(entropy[nonempty].mean()) if nonempty.any() else 0.0,
            "max_possible": float(np.log2(num_classes)),
        },
        "samples_histogram": size_histogram(sizes),
    }
    if list_clients is None:
        list_clients = len(parts) <= LISTED_CLIENTS
    if list_clients:
        dense = counts.dense()
        stats["clients"] = [
            {
                "client": k if client_names is None else client_names[k],
                "samples": int(sizes[k]),
                "label_entropy_bits": round(float(entropy[k]), 6),
                "label_counts": dense[k].tolist(),
            }
            for k in range(len(parts))
        ]
    return stats


def label_counts_of(labels: np.ndarray, partition: Partition, num_classes: int) -> LabelCounts:
    """:meth:`LabelCounts.of`, with tasks without classes (seq2seq: every label 0) counted as one class."""
    labels = np.asarray(labels)
    return LabelCounts.of(labels, partition, max(num_classes, int(labels.max(initial=-1)) + 1, 1))


def client_arrays(
    labels: np.ndarray, partition: Partition, num_classes: int, counts: LabelCounts | None = None
) -> dict[str, np.ndarray]:
    """Per-client arrays for a compact file (``numpy.savez``): ``samples`` (int64), ``label_entropy_bits``
    (float32), the label counts as sparse triples ``label_counts_client``, ``label_counts_label``,
    ``label_counts_count`` (the non-zero entries of the ``[clients, classes]`` matrix), and the partition itself as
    ``rows``, ``starts``, ``ends`` (client ``k`` holds ``rows[starts[k]:ends[k]]``)."""
    parts = Segments.of(partition)
    counts = counts if counts is not None else label_counts_of(labels, parts, num_classes)
    return {
        "samples": parts.sizes,
        "label_entropy_bits": counts.entropy_bits.astype(np.float32),
        "label_counts_client": counts.client,
        "label_counts_label": counts.label.astype(np.int32),
        "label_counts_count": counts.count,
        "rows": parts.rows,
        "starts": parts.starts,
        "ends": parts.ends,
    }


def make_partition(
    kind: str,
    labels: np.ndarray,
    groups: dict[str, np.ndarray],
    *,
    num_clients: int,
    dirichlet_alpha: float,
    quantity_beta: float,
    group_column: str,
    rng: np.random.Generator,
    heavy_tail: str = "lognormal",
    skew: float = 1.0,
) -> tuple[Partition, list[str] | None]:
    """The partition named by ``federation.partition.kind`` (and client names for the natural partition)."""
    if kind == "iid":
        return iid_partition(len(labels), num_clients, rng), None
    if kind == "dirichlet_label":
        return dirichlet_label_partition(labels, num_clients, dirichlet_alpha, rng), None
    if kind == "dirichlet_quantity":
        return dirichlet_quantity_partition(len(labels), num_clients, quantity_beta, rng), None
    if kind == "heavy_tailed":
        return heavy_tailed_partition(len(labels), num_clients, heavy_tail, skew, rng), None
    if kind in ("natural", "heavy_tailed_natural"):
        if group_column not in groups:
            raise ConfigError(
                f"federation.partition.group_column='{group_column}' is not a group column of the training data "
                f"(it has {sorted(groups) or 'none'}); pick one of those or another federation.partition.kind"
            )
        if kind == "heavy_tailed_natural":
            return heavy_tailed_natural_partition(groups[group_column], num_clients, heavy_tail, skew, rng), None
        return natural_partition(groups[group_column])
    raise ConfigError(f"federation.partition.kind must be one of {PARTITIONERS}, got '{kind}'")
