"""Example-level DP under a federation: budgets planned over the rounds a client takes part in, spent clients
retired, and no update without training averaged in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import binom

from tests.federation.conftest import (
    ClientPrivacyAccountant,
    dp_sgd,
    federation,
    make_method,
    poisson_digits,
    run_federation,
)
from trustml.errors import ConfigError
from trustml.federation.participation import inclusion_probabilities, planned_rounds
from trustml.federation.strategies import FedAvg


def dp_sgd_federation(
    root: Path, *, rounds: int, num_clients: int, clients_per_round: int, dp_rounds: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """FedAvg of ERM trained by DP-SGD for a budget of epsilon 4 on digits with seeded Poisson batches, each client
    planning its budget for ``dp_rounds`` fits; the round records and results."""
    datamodule = poisson_digits()
    method = make_method(datamodule, optimizer=dp_sgd(lr=0.2, target_epsilon=4.0, max_grad_norm=1.0, noise_seed=0))
    plugin = federation(
        FedAvg,
        rounds=rounds,
        num_clients=num_clients,
        clients_per_round=clients_per_round,
        seed=seed,
        client={"dp_rounds": dp_rounds},
    )
    _, history, results = run_federation(plugin, datamodule, root, callbacks=[ClientPrivacyAccountant()], method=method)
    return history, results


def test_inclusion_probability_per_selection_scheme() -> None:
    sizes = np.array([10, 0, 30, 60])
    assert inclusion_probabilities(sizes, 2, "uniform").tolist() == pytest.approx([2 / 3, 0.0, 2 / 3, 2 / 3])
    assert inclusion_probabilities(sizes, 2, "poisson").tolist() == pytest.approx([2 / 3, 0.0, 2 / 3, 2 / 3])
    # activity: two draws with replacement, client k drawn with probability n_k / N each time
    expected = [1 - (1 - p) ** 2 for p in (0.1, 0.0, 0.3, 0.6)]
    assert inclusion_probabilities(sizes, 2, "activity").tolist() == pytest.approx(expected)
    # more clients per round than there are clients: every client with data takes part in every round
    assert inclusion_probabilities(sizes, 9, "uniform").tolist() == pytest.approx([1.0, 0.0, 1.0, 1.0])


def test_planned_rounds_are_the_95_percent_quantile_of_participations() -> None:
    sizes = np.full(100, 11)
    planned = planned_rounds(sizes, rounds=20, clients_per_round=10, selection="uniform")
    # Binomial(20, 0.1): P(X <= 3) = 0.867 < 0.95 <= P(X <= 4) = 0.957
    assert binom.cdf(3, 20, 0.1) < 0.95 <= binom.cdf(4, 20, 0.1)
    assert planned.tolist() == [4] * 100
    assert planned_rounds(sizes, 20, 100, "uniform").tolist() == [20] * 100  # selected every round
    assert planned_rounds(sizes, 20, 10, "uniform", fixed=7).tolist() == [7] * 100
    assert planned_rounds(np.array([5, 0]), 3, 1, "uniform").tolist() == [3, 1]  # at least one round
    with pytest.raises(ConfigError, match="federation.client.dp_rounds"):
        planned_rounds(sizes, 20, 10, "uniform", fixed=0)


def test_clients_spend_their_budget_over_planned_rounds_and_are_then_retired(tmp_path) -> None:
    # 4 clients, all selected every round for 6 rounds, but each plans its budget for 2 rounds only
    history, results = dp_sgd_federation(tmp_path, rounds=6, num_clients=4, clients_per_round=4, dp_rounds=2, seed=0)
    first, second = history[:2]
    assert first["answered"] == second["answered"] == 4 and first["aggregated"] and second["aggregated"]
    assert first["client_budget_spent_max"] == 0.0 and second["client_budget_spent_mean"] == 1.0
    assert 3.9 <= second["client_epsilon_max"] <= 4.0  # two fits spend the whole budget, not one
    assert second["client_epsilon_max"] > first["client_epsilon_max"] > 0
    # every client is spent after round 2: nobody is selected again, so the run ends there instead of
    # averaging in updates that carry no training
    assert len(history) == 2 and second["retired"] == 4 and "test_acc" in second
    assert results["federation/clients_budget_spent"] == 4.0
    assert results["federation/aggregated_rounds"] == 2.0 and results["federation/failed_clients"] == 0.0


def test_a_spent_client_is_never_selected_again(tmp_path) -> None:
    history, results = dp_sgd_federation(tmp_path, rounds=8, num_clients=6, clients_per_round=2, dp_rounds=1, seed=1)
    # one round each: 6 clients, 2 per round -> 3 rounds, each client selected exactly once, then the run ends
    assert [r["retired"] for r in history] == [2, 4, 6]
    assert all(r["answered"] == 2 and r["failed"] == 0 and r["aggregated"] for r in history)
    assert results["federation/clients_budget_spent"] == 6.0
