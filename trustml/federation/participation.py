"""How many rounds each client plans its example-level DP budget for.

A client that trains with a DP optimizer (``optimizer=dp_sgd|dp_adam`` under a federation) accounts its own
epsilon over every local fit it makes, so it must calibrate its noise for the fits it will make before it
knows how often it will be selected. The number of rounds a client takes part in over ``R`` rounds is
``Binomial(R, pi_k)`` with per-round inclusion probability

- ``uniform`` and ``poisson`` selection: ``pi_k = min(K, M) / M`` (``K`` clients per round, ``M`` clients with data);
- ``activity`` selection (``K`` draws with replacement, client ``k`` drawn with probability ``p_k``):
  ``pi_k = 1 - (1 - p_k)^K``.

Each client plans for the ``quantile`` (default 95%) of that distribution, at least one round: with the
default, about one client in twenty spends its budget before the last round and is then selected no more
(:class:`~trustml.federation.rounds.RoundLoop` retires it). ``federation.client.dp_rounds`` fixes the number
for every client instead.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

from trustml.errors import ConfigError

#: Default quantile of a client's participation count that its budget is planned for.
PARTICIPATION_QUANTILE = 0.95


def inclusion_probabilities(
    sizes: np.ndarray, clients_per_round: int, selection: str, activity_exponent: float = 1.0
) -> np.ndarray:
    """Per client, the probability ``pi_k`` of taking part in one round (0 for clients without data)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    eligible = sizes > 0
    count = int(eligible.sum())
    probability = np.zeros(len(sizes))
    if count == 0:
        return probability
    if selection == "activity":
        propensity = np.where(eligible, sizes, 0.0) ** activity_exponent * eligible
        draw = propensity / propensity.sum()
        probability[eligible] = 1.0 - (1.0 - draw[eligible]) ** clients_per_round
    else:
        probability[eligible] = min(clients_per_round, count) / count
    return probability


def planned_rounds(
    sizes: np.ndarray,
    rounds: int,
    clients_per_round: int,
    selection: str,
    *,
    activity_exponent: float = 1.0,
    fixed: int | None = None,
    quantile: float = PARTICIPATION_QUANTILE,
) -> np.ndarray:
    """Per client, the number of rounds its DP budget is planned for: ``fixed`` for every client when given,
    else the ``quantile`` of ``Binomial(rounds, pi_k)``, at least 1 and at most ``rounds`` (int64)."""
    if fixed is not None:
        if fixed < 1:
            raise ConfigError(f"federation.client.dp_rounds must be >= 1 (or null), got {fixed}")
        return np.full(len(sizes), min(int(fixed), rounds), dtype=np.int64)
    probability = inclusion_probabilities(sizes, clients_per_round, selection, activity_exponent)
    planned = binom.ppf(quantile, rounds, probability)
    return np.clip(np.nan_to_num(planned, nan=1.0), 1, rounds).astype(np.int64)
