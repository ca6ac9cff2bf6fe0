"""Client selection per round and the aggregation weight each selected client's update gets.

The target of one round is the full-participation FedAvg update ``Delta* = sum_k (n_k / N) Delta_k`` over
all clients ``k`` that hold data (``n_k`` samples, ``N = sum_k n_k``). A scheme samples clients; the
weighting turns their updates into an estimate of ``Delta*``:

- ``uniform``: ``K`` distinct clients, uniformly without replacement (inclusion probability
  ``pi = K / M``).
- ``activity``: ``K`` draws with replacement, client ``k`` drawn with probability
  ``p_k = n_k^gamma / sum_j n_j^gamma`` (``gamma = 1``: proportional to its number of samples). A client
  drawn twice trains once and its weight counts twice (its update has the same distribution each time).
- ``poisson``: every client joins independently with probability ``q = K / M`` (what DP-FedAvg's
  accountant assumes).

Weightings:

- ``unbiased``: Horvitz-Thompson / Hansen-Hurwitz importance weights ``w_k = (n_k / N) / pi_k`` for
  ``uniform`` and ``poisson`` and ``w_k = m_k (n_k / N) / (K p_k)`` for ``activity`` (``m_k`` draws), so
  ``E[sum_S w_k Delta_k] = Delta*`` exactly. The weights need not sum to one in a given round (higher
  variance); with ``activity`` and ``gamma = 1`` they are ``m_k / K`` and do sum to one (Li et al. 2020,
  "On the Convergence of FedAvg on Non-IID Data", scheme I).
- ``samples``: ``w_k = m_k n_k / sum_S m_j n_j``, i.e. FedAvg over the selected clients. Under ``uniform``
  it is the ratio estimator (consistent, the usual FedAvg). Under ``activity`` it is *not* unbiased: heavy
  clients are both drawn more often and weighted by their size, so the round moves toward
  ``sum_k n_k^(1+gamma) Delta_k / sum_k n_k^(1+gamma)``, deliberately favouring active clients as in
  production systems (Dupuy et al., ICASSP 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trustml.errors import ConfigError

SELECTIONS = ("uniform", "activity", "poisson")
WEIGHTINGS = ("samples", "unbiased")


@dataclass(frozen=True)
class RoundSelection:
    """The clients that train in one round (distinct ids), the aggregation weight of each one's update, the
    per-client inclusion rate ``K / M`` and the number ``M`` of clients that held data."""

    clients: np.ndarray
    weights: np.ndarray
    sample_rate: float
    num_eligible: int


@dataclass(frozen=True)
class Eligibility:
    """What selection derives from every client's sample count, once per period rather than once per round (the
    O(clients) part of a round): the counts as float64, the ids of the clients with data, and their total."""

    sizes: np.ndarray
    eligible: np.ndarray
    total: float

    @classmethod
    def of(cls, sizes: np.ndarray) -> Eligibility:
        """From every client's sample count."""
        sizes = np.asarray(sizes, dtype=np.float64)
        eligible = np.flatnonzero(sizes > 0)
        return cls(sizes, eligible, float(sizes[eligible].sum()))


def select_clients(
    sizes: np.ndarray,
    clients_per_round: int,
    scheme: str,
    rng: np.random.Generator,
    *,
    activity_exponent: float = 1.0,
    weighting: str = "samples",
    eligibility: Eligibility | None = None,
) -> RoundSelection:
    """Draw this round's clients among those with data (``sizes > 0``) and weight them (see module doc).
    ``eligibility``: :meth:`Eligibility.of` ``(sizes)`` computed before (the result is the same)."""
    if scheme not in SELECTIONS:
        raise ConfigError(f"federation.selection.scheme must be one of {SELECTIONS}, got '{scheme}'")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"federation.selection.weighting must be one of {WEIGHTINGS}, got '{weighting}'")
    if clients_per_round < 1:
        raise ConfigError(f"federation.selection.clients_per_round must be at least 1, got {clients_per_round}")
    if eligibility is None:
        eligibility = Eligibility.of(sizes)
    sizes, eligible, total = eligibility.sizes, eligibility.eligible, eligibility.total
    if len(eligible) == 0:
        return RoundSelection(np.zeros(0, dtype=np.int64), np.zeros(0), 0.0, 0)
    k = min(clients_per_round, len(eligible))
    rate = k / len(eligible)

    if scheme == "uniform":
        clients = np.sort(rng.choice(eligible, size=k, replace=False))
        draws = np.ones(len(clients))
        inclusion = np.full(len(clients), rate)
    elif scheme == "poisson":
        clients = eligible[rng.random(len(eligible)) < rate]
        draws = np.ones(len(clients))
        inclusion = np.full(len(clients), rate)
    else:
        propensity = sizes[eligible] ** activity_exponent
        probability = propensity / propensity.sum()
        drawn = rng.choice(len(eligible), size=k, replace=True, p=probability)
        picked, draws = np.unique(drawn, return_counts=True)
        clients = eligible[picked]
        draws = draws.astype(np.float64)
        inclusion = k * probability[picked]  # expected number of draws E[m_k] = K p_k

    if weighting == "unbiased":
        weights = draws * (sizes[clients] / total) / inclusion
    else:
        mass = draws * sizes[clients]
        weights = mass / mass.sum() if len(clients) else mass
    return RoundSelection(clients.astype(np.int64), weights, rate, len(eligible))
