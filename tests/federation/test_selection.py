"""Client selection: who is drawn, and whether the weighted round update estimates full-participation FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from trustml.errors import ConfigError
from trustml.federation.selection import select_clients

SIZES = np.array([200, 50, 0, 10, 5, 1, 120, 0, 30, 8, 2, 70], dtype=np.int64)
UPDATES = np.random.default_rng(3).normal(size=(len(SIZES), 4))
TARGET = (SIZES[:, None] / SIZES.sum() * UPDATES).sum(axis=0)  # sum_k (n_k / N) Delta_k


def mean_round_update(scheme: str, weighting: str, draws: int = 8000, gamma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(11)
    total = np.zeros(UPDATES.shape[1])
    for _ in range(draws):
        sel = select_clients(SIZES, 4, scheme, rng, activity_exponent=gamma, weighting=weighting)
        total += sel.weights @ UPDATES[sel.clients]
    return total / draws


@pytest.mark.parametrize("scheme", ["uniform", "activity", "poisson"])
def test_only_clients_with_data_are_selected(scheme: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sel = select_clients(SIZES, 4, scheme, rng)
        assert np.all(SIZES[sel.clients] > 0)
        assert len(np.unique(sel.clients)) == len(sel.clients)
        assert sel.num_eligible == 10 and sel.sample_rate == pytest.approx(0.4)


def test_uniform_draws_k_distinct_clients_with_equal_probability() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros(len(SIZES))
    for _ in range(5000):
        sel = select_clients(SIZES, 4, "uniform", rng)
        assert len(sel.clients) == 4
        counts[sel.clients] += 1
    np.testing.assert_allclose(counts[SIZES > 0] / 5000, 0.4, atol=0.03)


def test_activity_selection_draws_proportional_to_samples_to_the_gamma() -> None:
    rng = np.random.default_rng(0)
    for gamma in (1.0, 0.5):
        draws = np.zeros(len(SIZES))
        for _ in range(5000):
            sel = select_clients(SIZES, 1, "activity", rng, activity_exponent=gamma)
            draws[sel.clients] += 1
        expected = SIZES**gamma / (SIZES**gamma).sum()
        np.testing.assert_allclose(draws / 5000, expected, atol=0.02)


@pytest.mark.parametrize(
    ("scheme", "gamma"), [("uniform", 1.0), ("activity", 1.0), ("activity", 0.5), ("poisson", 1.0)]
)
def test_unbiased_weighting_estimates_full_participation_fedavg(scheme: str, gamma: float) -> None:
    estimate = mean_round_update(scheme, "unbiased", gamma=gamma)
    np.testing.assert_allclose(estimate, TARGET, atol=0.03 * np.abs(TARGET).max() + 0.01)


def test_sample_count_weighting_under_activity_selection_favours_heavy_clients() -> None:
    """The documented bias: FedAvg weights on activity-drawn clients overweight large clients."""
    estimate = mean_round_update("activity", "samples")
    heavy = SIZES.astype(float) ** 2 / (SIZES.astype(float) ** 2).sum()
    tilted = (heavy[:, None] * UPDATES).sum(axis=0)
    assert np.abs(estimate - TARGET).max() > 0.05
    assert np.abs(estimate - tilted).max() < np.abs(estimate - TARGET).max()


def test_activity_with_gamma_one_gives_weights_that_sum_to_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        sel = select_clients(SIZES, 5, "activity", rng, weighting="unbiased")
        assert sel.weights.sum() == pytest.approx(1.0)


def test_fewer_clients_with_data_than_k_selects_them_all_and_none_gives_an_empty_round() -> None:
    sel = select_clients(np.array([0, 3, 0, 4]), 10, "uniform", np.random.default_rng(0))
    assert sel.clients.tolist() == [1, 3] and sel.weights.tolist() == pytest.approx([3 / 7, 4 / 7])
    empty = select_clients(np.zeros(5), 3, "uniform", np.random.default_rng(0))
    assert len(empty.clients) == 0 and empty.num_eligible == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "round_robin"}, "federation.selection.scheme must be one of"),
        ({"weighting": "equal"}, "federation.selection.weighting must be one of"),
        ({"clients_per_round": 0}, "clients_per_round must be at least 1"),
    ],
)
def test_bad_selection_options_name_the_option(kwargs: dict, message: str) -> None:
    args = {"scheme": "uniform", "clients_per_round": 2, **kwargs}
    weighting = args.pop("weighting", "samples")
    with pytest.raises(ConfigError, match=message):
        select_clients(SIZES, args["clients_per_round"], args["scheme"], np.random.default_rng(0), weighting=weighting)
