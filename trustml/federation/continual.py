"""The continual setting (Dupuy et al., ICASSP 2022, "Learnings from federated learning in the real world").

Each client's data arrives over ``T`` time periods: the ``j``-th of its ``n_k`` samples (in arrival order)
arrives in period ``floor(j T / n_k)``, so by the end of period ``t`` it holds
``a_k(t) = ceil((t + 1) n_k / T)`` samples. A client stores at most ``cap`` samples and drops the oldest,
so it trains on its window ``rows[max(0, a_k(t) - cap) : a_k(t)]``. Rounds are spread evenly over the
periods. The static setting is ``T = 1`` with no cap: every client holds all its data from round 0.

With activity growth ``g`` (``federation.partition.arrival_growth``) the data arriving in period ``t`` is
proportional to ``g^t``: by the end of period ``t`` a client holds ``a_k(t) = ceil(F(t) n_k)`` samples with
``F(t) = (g^(t+1) - 1) / (g^T - 1)`` (``g = 1``: the even arrival above, ``F(t) = (t + 1) / T``), so devices grow
more active over time (``g > 1``) and a heavy device fills its storage cap sooner.
"""

from __future__ import annotations

import numpy as np

from trustml.errors import ConfigError
from trustml.federation.partition import Partition, Segments

ARRIVAL_ORDERS = ("data", "random")


def arrival_order(partition: Partition, order: str, rng: np.random.Generator) -> Partition:
    """Each client's rows in the order they arrive: as in the data (``data``) or shuffled (``random``; one
    ``rng.permutation`` per client with data, in client order)."""
    parts = Segments.of(partition)
    if order == "data":
        return parts
    if order == "random":
        rows = parts.rows.copy()
        for start, end in zip(parts.starts.tolist(), parts.ends.tolist(), strict=True):
            if end - start > 1:  # permuting 0 or 1 rows draws nothing from rng
                rows[start:end] = rng.permutation(rows[start:end])
        return Segments(rows, parts.starts, parts.ends)
    raise ConfigError(f"federation.partition.arrival_order must be one of {ARRIVAL_ORDERS}, got '{order}'")


def arrived_counts(sizes: np.ndarray, period: int, num_periods: int, growth: float = 1.0) -> np.ndarray:
    """Samples each client has received by the end of ``period``: ``ceil(F(t) n_k)`` (module doc; with ``growth``
    1, exactly ``ceil((t + 1) n_k / T)`` in integers)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if growth == 1.0 or period >= num_periods - 1:
        return -((-(min(period, num_periods - 1) + 1) * sizes) // num_periods)
    if growth <= 0:
        raise ConfigError(f"federation.partition.arrival_growth must be > 0, got {growth}")
    fraction = (growth ** (period + 1) - 1.0) / (growth**num_periods - 1.0)
    return np.minimum(sizes, np.ceil(fraction * sizes - 1e-9).astype(np.int64))


def period_of_round(round_index: int, rounds: int, num_periods: int) -> int:
    """The time period that round ``r`` (0-based) of ``rounds`` falls in: ``floor(r T / R)``."""
    return min(num_periods - 1, round_index * num_periods // max(rounds, 1))


def client_windows(
    arrivals: Partition, period: int, num_periods: int, storage_cap: int | None, growth: float = 1.0
) -> Partition:
    """Rows each client holds at ``period``: the newest ``storage_cap`` of those that have arrived (``growth``:
    see :func:`arrived_counts`)."""
    parts = Segments.of(arrivals)
    ends = arrived_counts(parts.sizes, period, num_periods, growth)
    starts = np.zeros_like(ends) if storage_cap is None else np.maximum(0, ends - storage_cap)
    return Segments(parts.rows, parts.starts + starts, parts.starts + ends)
