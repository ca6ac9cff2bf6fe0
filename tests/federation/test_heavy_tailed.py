"""Heavy-tailed device populations: log-normal and Zipf sample counts (also over natural groups), the skew statistics
(Gini, top-10% share) recorded, activity growing over continual periods, and a federation that learns on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.federation.conftest import federation, run_federation
from trustml.errors import ConfigError
from trustml.federation.continual import arrived_counts
from trustml.federation.options import FederationConfig, PartitionConfig
from trustml.federation.partition import (
    heavy_tailed_natural_partition,
    heavy_tailed_partition,
    heavy_tailed_weights,
    size_skew,
)
from trustml.federation.population import ClientPopulation
from trustml.federation.strategies import FedAvg


def sizes_of(partition: list[np.ndarray]) -> np.ndarray:
    return np.array([len(rows) for rows in partition])


def test_size_skew_is_the_gini_coefficient_and_the_top_decile_share() -> None:
    assert size_skew(np.full(10, 7)) == {"gini": 0.0, "top10_share": 1 / 10}
    assert size_skew(np.array([0] * 9 + [50])) == pytest.approx({"gini": 0.9, "top10_share": 1.0})
    x = np.random.default_rng(0).integers(0, 100, size=37)
    pairwise = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert size_skew(x)["gini"] == pytest.approx(pairwise)
    assert size_skew(x)["top10_share"] == pytest.approx(np.sort(x)[-4:].sum() / x.sum())


@pytest.mark.parametrize("tail", ["lognormal", "zipf"])
def test_heavy_tailed_partition_covers_every_sample_once_and_its_skew_grows_with_the_option(tail: str) -> None:
    ginis = []
    for skew in (0.0, 1.0, 2.0):
        partition = heavy_tailed_partition(20_000, 500, tail, skew, np.random.default_rng(0))
        rows = np.concatenate(partition)
        assert np.array_equal(np.sort(rows), np.arange(20_000))
        assert sizes_of(partition).min() >= 1
        ginis.append(size_skew(sizes_of(partition))["gini"])
    assert ginis[0] < 0.01 < ginis[1] < ginis[2]
    again = heavy_tailed_partition(20_000, 500, tail, 1.0, np.random.default_rng(0))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(again, heavy_tailed_partition(20_000, 500, tail, 1.0, np.random.default_rng(0)), strict=True)
    )


def test_zipf_counts_follow_the_power_law_of_the_rank() -> None:
    devices, skew = 1000, 1.2
    partition = heavy_tailed_partition(200_000, devices, "zipf", skew, np.random.default_rng(1))
    law = np.arange(1, devices + 1, dtype=float) ** -skew
    expected_top10 = law[:100].sum() / law.sum()
    assert size_skew(sizes_of(partition))["top10_share"] == pytest.approx(expected_top10, abs=0.01)
    ranked = np.sort(sizes_of(partition))[::-1]
    assert ranked[0] / ranked[9] == pytest.approx(10**skew, rel=0.05)


def test_lognormal_weights_have_the_requested_sigma() -> None:
    weights = heavy_tailed_weights(50_000, "lognormal", 1.5, np.random.default_rng(0))
    assert np.log(weights).std() == pytest.approx(1.5, rel=0.02)


def test_heavy_tailed_natural_partition_keeps_groups_whole_on_heavy_devices() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"conv{i}" for i in range(2000)], rng.integers(5, 15, size=2000))
    partition = heavy_tailed_natural_partition(groups, 200, "lognormal", 2.0, np.random.default_rng(0))
    assert np.array_equal(np.sort(np.concatenate(partition)), np.arange(len(groups)))
    owner = np.empty(len(groups), dtype=int)
    for device, rows in enumerate(partition):
        owner[rows] = device
    for name in np.unique(groups)[:200]:
        assert len(np.unique(owner[groups == name])) == 1  # a conversation lives on one device
    skew = size_skew(sizes_of(partition))
    assert skew["gini"] > 0.6 and skew["top10_share"] > 0.4


def test_activity_grows_over_continual_periods() -> None:
    sizes = np.array([7, 70, 0])
    assert [arrived_counts(sizes, t, 3, growth=2.0)[0] for t in range(3)] == [1, 3, 7]  # F = 1/7, 3/7, 7/7
    assert arrived_counts(sizes, 1, 3, growth=2.0).tolist() == [3, 30, 0]
    assert [arrived_counts(sizes, t, 3).tolist() for t in range(3)] == [[3, 24, 0], [5, 47, 0], [7, 70, 0]]
    assert arrived_counts(sizes, 0, 3, growth=0.5).tolist() == [4, 40, 0]  # F = 4/7: activity that fades


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "heavy_tailed", "heavy_tail": "pareto"}, "heavy_tail must be one of"),
        ({"kind": "heavy_tailed", "skew": -1.0}, "skew must be >= 0"),
        ({"arrival_growth": 2.0}, "arrival_growth applies to the continual setting only"),
        ({"setting": "continual", "num_periods": 2, "arrival_growth": 0.0}, "arrival_growth must be > 0"),
    ],
)
def test_bad_heavy_tailed_options_are_refused_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PartitionConfig(**options)


def test_a_heavy_tailed_population_records_its_skew_per_period(digits) -> None:  # noqa: ANN001
    options = PartitionConfig(
        kind="heavy_tailed", num_clients=100, skew=1.5, setting="continual", num_periods=3, arrival_growth=2.0
    )
    population = ClientPopulation.from_datamodule(digits, options)
    stats = json.loads(json.dumps(population.statistics()))
    assert stats["samples_per_client"]["gini"] == pytest.approx(size_skew(sizes_of(population.partition))["gini"])
    assert stats["samples_per_client"]["top10_share"] > 0.3
    held = stats["held_samples_per_period"]
    assert held[-1] == len(digits.splits["train"]) and held[0] < held[1] - held[0] < held[2] - held[1]
    assert len(stats["size_skew_per_period"]) == 3
    with pytest.raises(ConfigError, match="exceeds the .* training samples"):
        ClientPopulation.from_datamodule(digits, PartitionConfig(kind="heavy_tailed", num_clients=10**6))


def test_fedavg_learns_on_heavy_tailed_devices_and_reports_their_skew(digits, tmp_path: Path) -> None:  # noqa: ANN001
    plugin = federation(
        FedAvg,
        rounds=6,
        num_clients=100,
        clients_per_round=10,
        seed=0,
        partition={"kind": "heavy_tailed", "heavy_tail": "zipf", "skew": 1.0},
        selection={"scheme": "activity", "activity_exponent": 0.5},
        client={"local_epochs": 2},
    )
    assert isinstance(plugin.config, FederationConfig)
    _, history, results = run_federation(plugin, digits, tmp_path)
    stats = json.loads((tmp_path / "federation" / "partition.json").read_text())
    assert results["federation/partition_gini"] == pytest.approx(stats["samples_per_client"]["gini"])
    assert results["federation/partition_top10_share"] == pytest.approx(stats["samples_per_client"]["top10_share"])
    assert results["federation/partition_gini"] > 0.5
    assert history[-1]["test_acc"] > 0.8, [r["test_acc"] for r in history]
