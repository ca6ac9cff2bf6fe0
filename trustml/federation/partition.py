"""Partitioners: which training samples live on which client, as pure functions of labels or group columns.

Each partitioner returns ``list[np.ndarray]``: entry ``k`` holds the positions (into the training split)
of client ``k``'s samples, in ascending order. Every position is assigned to exactly one client. Random
partitioners draw only from the ``numpy.random.Generator`` they are given, so a seed fixes the partition.
Clients may be empty under strong skew; the statistics report them and client selection skips them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trustml.errors import ConfigError

Partition = list[np.ndarray]

PARTITIONERS = ("iid", "dirichlet_label", "dirichlet_quantity", "natural", "heavy_tailed", "heavy_tailed_natural")
#: distributions of the device weights of the heavy-tailed partitioners
HEAVY_TAILS = ("lognormal", "zipf")


def _check_num_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"federation.partition.num_clients must be at least 1, got {num_clients}")


def _split_by_owner(owner: np.ndarray, num_clients: int) -> Partition:
    """Positions grouped by ``owner[position]`` (client id), each group in ascending position order."""
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


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


def partition_statistics(
    labels: np.ndarray, partition: Partition, num_classes: int, client_names: list[str] | None = None
) -> dict[str, Any]:
    """Samples per client, per-client label counts and label entropy (bits), and their summaries, as JSON."""
    labels = np.asarray(labels)
    # tasks without classes (seq2seq: every label 0) count as one class
    num_classes = max(num_classes, int(labels.max(initial=-1)) + 1, 1)
    sizes = np.array([len(rows) for rows in partition], dtype=np.int64)
    owner = np.repeat(np.arange(len(partition)), sizes)
    rows = np.concatenate(partition) if partition else np.zeros(0, dtype=np.int64)
    counts = np.bincount(owner * num_classes + labels[rows], minlength=len(partition) * num_classes)
    counts = counts.reshape(len(partition), num_classes)
    entropy = label_entropy_bits(counts)
    nonempty = sizes > 0
    return {
        "num_clients": len(partition),
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
        "clients": [
            {
                "client": k if client_names is None else client_names[k],
                "samples": int(sizes[k]),
                "label_entropy_bits": round(float(entropy[k]), 6),
                "label_counts": counts[k].tolist(),
            }
            for k in range(len(partition))
        ],
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
