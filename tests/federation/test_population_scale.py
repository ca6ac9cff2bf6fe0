"""Populations at scale: compact set-up (no Python object per device), lazy per-device rows equal to the eager
partition, selection state reused within a period without changing the draws, and the compact partition file."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
import torch

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.federation.continual import arrival_order, client_windows
from trustml.federation.options import PartitionConfig, SelectionConfig
from trustml.federation.partition import (
    Segments,
    iid_partition,
    label_counts_of,
    label_entropy_bits,
    partition_statistics,
)
from trustml.federation.population import ClientPopulation
from trustml.federation.selection import select_clients
from trustml.federation.strategies import write_partition


class Rows(TrustDataModule):
    """``rows`` training rows of one feature, labels ``row % 10`` (only the partition is under test)."""

    def __init__(self, rows: int) -> None:
        super().__init__(DataOptions())
        self.rows = rows

    def load_splits(self) -> dict[str, Split]:
        self.label_names = [str(c) for c in range(10)]

        def split(n: int) -> Split:
            return Split(inputs=torch.zeros(n, 1), labels=torch.arange(n) % 10, index=torch.arange(n))

        return {"train": split(self.rows), "val": split(10), "test": split(10)}


def test_200k_devices_set_up_without_a_python_object_per_device(tmp_path):
    data = Rows(200_000)
    data.setup("fit")
    options = PartitionConfig(kind="iid", num_clients=200_000, setting="continual", num_periods=2, storage_cap=1)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        population = ClientPopulation.from_datamodule(data, options)
        write_partition(tmp_path, population)
        population.sizes(0), population.windows(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the eager layout (a numpy array per device, a JSON dict per device) peaks at about 420 MiB here; the arrays of
    # 200,000 devices with one row each peak at about 20 MiB (int64 positions, starts, ends, label counts, ...)
    assert (peak - base) / 2**20 < 40
    stats = json.loads((tmp_path / "partition.json").read_text())
    assert "clients" not in stats and stats["num_clients"] == 200_000 and stats["empty_clients"] == 0
    assert stats["samples_histogram"] == {"lower": [0, 1], "clients": [0, 200_000]}
    assert (tmp_path / "partition.json").stat().st_size < 2000
    assert population.sizes(0).sum() == 200_000  # every device holds its one row from period 0


def test_lazy_rows_equal_the_eager_partition():
    num_samples, num_clients, seed = 503, 37, 4
    parts = iid_partition(num_samples, num_clients, np.random.default_rng(seed))
    # the eager reference, from the same draws: owner[perm] = arange % M, each client's rows in ascending order
    owner = np.empty(num_samples, dtype=np.int64)
    owner[np.random.default_rng(seed).permutation(num_samples)] = np.arange(num_samples) % num_clients
    eager = [np.flatnonzero(owner == k) for k in range(num_clients)]
    assert isinstance(parts, Segments) and len(parts) == num_clients
    for k in range(num_clients):
        np.testing.assert_array_equal(parts[k], eager[k])
    np.testing.assert_array_equal(parts.sizes, [len(rows) for rows in eager])
    # continual windows: random arrival order as the per-client permutations of the eager code, then a storage cap
    arrivals = arrival_order(parts, "random", np.random.default_rng(1))
    rng = np.random.default_rng(1)
    eager_arrivals = [rng.permutation(rows) for rows in eager]
    for period in range(3):
        windows = client_windows(arrivals, period, 3, storage_cap=5, growth=1.5)
        eager_windows = client_windows(eager_arrivals, period, 3, storage_cap=5, growth=1.5)
        assert [w.tolist() for w in windows] == [w.tolist() for w in eager_windows]
    for k in range(num_clients):
        np.testing.assert_array_equal(arrivals[k], eager_arrivals[k])


def test_sparse_label_statistics_equal_the_dense_ones():
    labels = np.random.default_rng(0).integers(0, 6, 400)
    parts = iid_partition(400, 30, np.random.default_rng(1))
    counts = label_counts_of(labels, parts, 6)
    dense = np.stack([np.bincount(labels[rows], minlength=6) for rows in parts])
    np.testing.assert_array_equal(counts.dense(), dense)
    np.testing.assert_allclose(counts.entropy_bits, label_entropy_bits(dense), atol=1e-12)
    listed = partition_statistics(labels, parts, 6)
    summary = partition_statistics(labels, parts, 6, list_clients=False)
    assert [c["label_counts"] for c in listed["clients"]] == dense.tolist()
    assert {k: v for k, v in listed.items() if k != "clients"} == summary


def test_partition_file_holds_every_device(tmp_path):
    data = Rows(300)
    data.setup("fit")
    population = ClientPopulation.from_datamodule(data, PartitionConfig(kind="dirichlet_quantity", num_clients=40))
    write_partition(tmp_path, population)
    arrays = np.load(io.BytesIO((tmp_path / "partition.npz").read_bytes()))
    for k in range(len(population)):
        rows = arrays["rows"][arrays["starts"][k] : arrays["ends"][k]]
        np.testing.assert_array_equal(rows, population.partition[k])
    np.testing.assert_array_equal(arrays["samples"], population.sizes(0))
    listed = json.loads((tmp_path / "partition.json").read_text())["clients"]
    assert [c["samples"] for c in listed] == arrays["samples"].tolist()


@pytest.mark.parametrize("scheme", ["uniform", "activity", "poisson"])
def test_reused_selection_state_draws_the_same_clients(scheme):
    from trustml.federation.options import PrivacyConfig, ServerConfig
    from trustml.federation.server import FederatedServer
    from trustml.federation.server_optim import FedAvgServer

    sizes = np.random.default_rng(0).integers(0, 5, 1000)
    frozen = sizes.copy()
    frozen.flags.writeable = False
    selection = SelectionConfig(clients_per_round=10, scheme=scheme)
    server = FederatedServer(
        torch.zeros(3), FedAvgServer(), selection=selection, server=ServerConfig(), privacy=PrivacyConfig(), seed=7
    )
    rng = np.random.default_rng(7)
    for _ in range(5):
        cached = server.select(frozen)
        fresh = select_clients(sizes.copy(), 10, scheme, rng)
        np.testing.assert_array_equal(cached.clients, fresh.clients)
        np.testing.assert_allclose(cached.weights, fresh.weights)
    assert server._eligibility is not None and server._eligibility[0] is frozen
