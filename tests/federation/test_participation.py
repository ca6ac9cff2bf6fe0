"""Example-level DP under a federation: budgets planned over the rounds a client takes part in, spent clients
retired, and no update without training averaged in."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from scipy.stats import binom

from tests.federation.conftest import federation, make_method
from tests.federation.test_simulation import run_federation
from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.errors import ConfigError
from trustml.federation.participation import inclusion_probabilities, planned_rounds
from trustml.federation.strategies import FedAvg
from trustml.methods.erm import ERM, ERMConfig
from trustml.privacy.callback import PrivacyAccountantCallback
from trustml.privacy.options import DPSGDConfig
from trustml.privacy.plugins import DPSGD
from trustml.privacy.sampling import PoissonBatchSampler


class ClientAccountant(PrivacyAccountantCallback):
    """The DP-SGD accountant run inside every client's local fit."""

    federated_scope = "client"


def dp_sgd_on_digits() -> tuple[DigitsDataModule, ERM]:
    """Digits with seeded Poisson batches and ERM trained by DP-SGD for a budget of epsilon 4."""
    datamodule = DigitsDataModule(DigitsConfig(batch_size=32))
    datamodule.setup("fit")
    datamodule.train_batch_sampler_factory = partial(PoissonBatchSampler.from_batch_size, seed=0)
    method = make_method(datamodule)
    dp_sgd = DPSGD(DPSGDConfig(lr=0.2, target_epsilon=4.0, max_grad_norm=1.0, noise_seed=0))
    return datamodule, ERM(ERMConfig(), model=method.model, num_classes=10, optimizer=dp_sgd)


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
    datamodule, method = dp_sgd_on_digits()
    # 4 clients, all selected every round for 6 rounds, but each plans its budget for 2 rounds only
    plugin = federation(
        FedAvg,
        rounds=6,
        partition={"num_clients": 4},
        selection={"clients_per_round": 4},
        client={"dp_rounds": 2},
        server={"seed": 0},
    )
    _, history, results = run_federation(plugin, datamodule, tmp_path, callbacks=[ClientAccountant()], method=method)
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
    datamodule, method = dp_sgd_on_digits()
    plugin = federation(
        FedAvg,
        rounds=8,
        partition={"num_clients": 6},
        selection={"clients_per_round": 2},
        client={"dp_rounds": 1},
        server={"seed": 1},
    )
    _, history, results = run_federation(plugin, datamodule, tmp_path, callbacks=[ClientAccountant()], method=method)
    # one round each: 6 clients, 2 per round -> 3 rounds, each client selected exactly once, then the run ends
    assert [r["retired"] for r in history] == [2, 4, 6]
    assert all(r["answered"] == 2 and r["failed"] == 0 and r["aggregated"] for r in history)
    assert results["federation/clients_budget_spent"] == 6.0
