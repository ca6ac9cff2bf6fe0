"""Partitioners: exact coverage, seeding, and the skew each one is meant to produce."""

from __future__ import annotations

import numpy as np
import pytest

from trustml.errors import ConfigError
from trustml.federation.partition import (
    dirichlet_label_partition,
    dirichlet_quantity_partition,
    iid_partition,
    label_entropy_bits,
    make_partition,
    natural_partition,
    partition_statistics,
)

LABELS = np.random.default_rng(0).integers(0, 10, size=3000)


def assert_exact_cover(partition: list[np.ndarray], n: int) -> None:
    rows = np.concatenate(partition)
    assert len(rows) == n
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in partition if len(p) > 1)


@pytest.mark.parametrize(
    "build",
    [
        lambda rng: iid_partition(len(LABELS), 37, rng),
        lambda rng: dirichlet_label_partition(LABELS, 37, 0.1, rng),
        lambda rng: dirichlet_label_partition(LABELS, 37, 100.0, rng),
        lambda rng: dirichlet_quantity_partition(len(LABELS), 37, 0.2, rng),
    ],
    ids=["iid", "label-0.1", "label-100", "quantity-0.2"],
)
def test_every_sample_is_assigned_exactly_once_and_the_seed_fixes_the_partition(build) -> None:
    partition = build(np.random.default_rng(5))
    assert len(partition) == 37
    assert_exact_cover(partition, len(LABELS))
    again = build(np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(partition, again, strict=True))
    other = build(np.random.default_rng(6))
    assert not all(np.array_equal(a, b) for a, b in zip(partition, other, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in iid_partition(1001, 10, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1001


def mean_entropy(alpha: float) -> float:
    partition = dirichlet_label_partition(LABELS, 20, alpha, np.random.default_rng(1))
    stats = partition_statistics(LABELS, partition, 10)
    return stats["label_entropy_bits"]["mean"]


def test_label_skew_grows_as_alpha_shrinks() -> None:
    entropies = [mean_entropy(alpha) for alpha in (100.0, 1.0, 0.1, 0.01)]
    assert all(a > b for a, b in zip(entropies, entropies[1:], strict=False)), entropies
    assert entropies[0] > 3.2  # near log2(10) = 3.32: almost IID
    assert entropies[-1] < 0.7  # most clients hold one class


def test_quantity_skew_grows_as_beta_shrinks_and_keeps_labels_iid() -> None:
    def size_cv(beta: float) -> float:
        parts = dirichlet_quantity_partition(len(LABELS), 50, beta, np.random.default_rng(2))
        sizes = np.array([len(p) for p in parts])
        return float(sizes.std() / sizes.mean())

    cvs = [size_cv(beta) for beta in (100.0, 1.0, 0.1)]
    assert cvs[0] < cvs[1] < cvs[2], cvs
    partition = dirichlet_quantity_partition(len(LABELS), 5, 100.0, np.random.default_rng(2))
    assert partition_statistics(LABELS, partition, 10)["label_entropy_bits"]["mean"] > 3.2


def test_natural_partition_makes_one_client_per_group_in_first_appearance_order() -> None:
    groups = np.array(["c7", "c2", "c7", "c9", "c2", "c2"], dtype=object)
    partition, names = natural_partition(groups)
    assert names == ["c7", "c2", "c9"]
    assert [p.tolist() for p in partition] == [[0, 2], [1, 4, 5], [3]]


def test_label_entropy_of_count_rows() -> None:
    entropy = label_entropy_bits(np.array([[5, 5, 0, 0], [4, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    np.testing.assert_allclose(entropy, [1.0, 0.0, 2.0, 0.0])


def test_statistics_report_sizes_entropy_and_empty_clients() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    stats = partition_statistics(
        labels, [np.array([0, 1]), np.array([2, 3, 4]), np.array([], dtype=int)], 3, ["a", "b", "c"]
    )
    assert stats["num_clients"] == 3 and stats["num_samples"] == 5 and stats["empty_clients"] == 1
    skew = {"gini": pytest.approx(0.4), "top10_share": pytest.approx(0.6)}  # sizes 0, 2, 3
    assert stats["samples_per_client"] == {"min": 0, "median": 2.0, "mean": 5 / 3, "max": 3, **skew}
    assert stats["clients"][1] == {
        "client": "b",
        "samples": 3,
        "label_entropy_bits": pytest.approx(0.918296, abs=1e-6),
        "label_counts": [0, 2, 1],
    }
    assert stats["label_entropy_bits"]["max_possible"] == pytest.approx(np.log2(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "dirichlet_label", "dirichlet_alpha": 0.0}, "dirichlet_alpha must be positive"),
        ({"kind": "dirichlet_quantity", "quantity_beta": -1.0}, "quantity_beta must be positive"),
        ({"kind": "iid", "num_clients": 0}, "num_clients must be at least 1"),
        ({"kind": "natural", "group_column": "speaker"}, "group_column='speaker' is not a group column"),
        ({"kind": "shards"}, "federation.partition.kind must be one of"),
    ],
)
def test_bad_partition_options_name_the_option(kwargs: dict, message: str) -> None:
    options = {"num_clients": 4, "dirichlet_alpha": 1.0, "quantity_beta": 1.0, "group_column": "device", **kwargs}
    kind = options.pop("kind")
    with pytest.raises(ConfigError, match=message):
        make_partition(kind, LABELS[:20], {"conversation": np.arange(20)}, rng=np.random.default_rng(0), **options)
