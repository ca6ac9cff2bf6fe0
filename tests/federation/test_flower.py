"""A real Flower federation: ServerApp and ClientApps on Flower's simulation engine (Ray), no mocks.

Messages travel through Flower's in-memory SuperLink state and Ray actors (separate processes on
127.0.0.1), exactly as ``runtime=flower`` runs them. Slow (Ray start-up and per-actor imports): run with
``-m slow``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.federation.conftest import make_method, trainer_factory
from trustml.federation.partition import iid_partition
from trustml.federation.strategies import FedAvg, FederationResults

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(__import__("importlib").util.find_spec(m) is None for m in ("flwr", "ray")),
        reason="needs flwr[simulation] (flwr and ray)",
    ),
]


class CrashOnRow(pl.Callback):
    """Client-side fault for the device holding ``row`` (runs inside the Ray actor)."""

    federated_scope = "client"

    def __init__(self, row: int) -> None:
        self.row = row

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.row in set(trainer.datamodule.rows.tolist()):
            raise RuntimeError("simulated device crash")


def test_a_flower_federation_trains_skips_a_crashing_client_and_checkpoints(digits, tmp_path, monkeypatch,
                                                                          caplog) -> None:
    # Ray actors import this package and this module (to unpickle CrashOnRow): give them the repo root.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    plugin = FedAvg(runtime="flower", rounds=2, num_devices=4, clients_per_round=4, min_clients=2,
                    client_timeout_s=120.0, local_epochs=2, seed=0, flower_num_cpus=2)
    crashing_row = int(iid_partition(len(digits.splits["train"]), 4, np.random.default_rng(0))[0][0])
    method = make_method(digits)
    results = FederationResults()
    start = time.monotonic()
    plugin.run(method, digits, trainer_factory(tmp_path, [results, CrashOnRow(crashing_row)]))
    assert time.monotonic() - start < 400

    history = [json.loads(line) for line in (tmp_path / "federation" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2]
    for record in history:
        assert (record["selected"], record["answered"], record["failed"]) == (4, 3, 1) and record["aggregated"]
    assert history[-1]["test_acc"] > 0.8
    assert "simulated device crash" in caplog.text
    assert results.final_results()["federation/failed_clients"] == 2.0
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["model.head.weight"], method.model.head.weight.detach())
    assert (tmp_path / "federation" / "server_state.pt").is_file()
