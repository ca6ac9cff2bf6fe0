"""A real Flower federation: ServerApp and ClientApps on Flower's simulation engine (Ray), no mocks.

Messages travel through Flower's in-memory SuperLink state and Ray actors (separate processes on
127.0.0.1), exactly as ``runtime.engine=flower`` runs them. Starting Ray and the actors costs most of the time, so
one Flower run serves every check here: a DP-SGD federation of 4 clients (one of which always crashes) runs
its first 2 rounds in-process, is resumed from its checkpoint under Flower for rounds 3-4, and is compared
with the same federation run in-process for 4 rounds uninterrupted. DP-SGD with fixed seeds (Poisson
sampler and noise) makes each client fit deterministic, so the two runs must agree (to float rounding).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.federation.conftest import (
    RaiseOnRow,
    dp_sgd,
    federation,
    history_of,
    make_method,
    poisson_digits,
    trainer_factory,
)
from trustml.errors import ConfigError
from trustml.federation.partition import iid_partition
from trustml.federation.strategies import FedAvg
from trustml.privacy.callback import PrivacyAccountantCallback

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS, FIRST_ROUNDS, ROUNDS = 4, 2, 4

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("flwr", "ray")),
    reason="needs flwr[simulation] (flwr and ray): pip install -e '.[flower]'",
)


def federate(root: Path, runtime: str, rounds: int, crashing_row: int) -> tuple[pl.LightningModule, dict[str, float]]:
    """Run (or resume, when ``root`` holds a checkpoint) the DP federation; return the final model and summary.

    The conftest MLP trains by DP-SGD with a fixed noise multiplier and noise seed, and no budget stop, on digits
    Poisson-sampled with a fixed seed (reproducible batches: a test, not a private run).
    """
    datamodule = poisson_digits()
    optimizer = dp_sgd(lr=1.0, noise_multiplier=0.7, target_epsilon=None, max_grad_norm=1.0, noise_seed=0)
    method = make_method(datamodule, optimizer=optimizer)
    plugin = federation(
        FedAvg,
        rounds=rounds,
        num_clients=CLIENTS,
        clients_per_round=CLIENTS,
        seed=0,
        client={"local_epochs": 2, "timeout_s": 120.0},
        server={"min_clients": 2},
        runtime={"engine": runtime, "flower_num_cpus": 1},
    )
    callbacks = [PrivacyAccountantCallback(), RaiseOnRow(crashing_row)]
    fit = plugin.run(method, datamodule, trainer_factory(root, callbacks))
    return method, fit.results


def client_states(root: Path) -> dict[str, Any]:
    """The clients' client-callback states in the run's checkpoint, as JSON would carry them."""
    saved = torch.load(root / "federation" / "server_state.pt", weights_only=True)
    return json.loads(json.dumps(saved["clients"]["client_states"]))


class Messages(logging.Handler):
    """Collects the messages logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The in-process reference (4 rounds) and the run resumed under Flower after 2 in-process rounds."""
    crashing_row = int(iid_partition(len(poisson_digits().splits["train"]), CLIENTS, np.random.default_rng(0))[0][0])
    reference_root, resumed_root = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("resumed")
    reference, reference_results = federate(reference_root, "simulation", ROUNDS, crashing_row)
    federate(resumed_root, "simulation", FIRST_ROUNDS, crashing_row)
    first_states = client_states(resumed_root)

    messages, logger = Messages(), logging.getLogger("trustml")
    level = logger.level
    logger.addHandler(messages)
    logger.setLevel(logging.INFO)
    start = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as patch:
            # Ray actors unpickle RaiseOnRow from tests.federation.conftest: give them the repo root.
            patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
            resumed, resumed_results = federate(resumed_root, "flower", ROUNDS, crashing_row)
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
    return {
        "reference": (reference_root, reference, reference_results),
        "resumed": (resumed_root, resumed, resumed_results),
        "first_states": first_states,
        "messages": messages.lines,
        "flower_s": time.monotonic() - start,
    }


def test_a_resumed_flower_federation_trains_as_the_simulation_does_and_skips_a_crashing_client(runs) -> None:
    reference_root, reference, reference_results = runs["reference"]
    resumed_root, resumed, resumed_results = runs["resumed"]
    assert runs["flower_s"] < 300
    history, expected = history_of(resumed_root), history_of(reference_root)
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    for record in history:
        assert (record["selected"], record["answered"], record["failed"]) == (CLIENTS, CLIENTS - 1, 1)
        assert record["aggregated"]
    assert any(
        "resuming the federated run" in line and f"after round {FIRST_ROUNDS}" in line for line in runs["messages"]
    )
    assert any("client error" in line and "simulated client crash" in line for line in runs["messages"])
    assert resumed_results["federation/failed_clients"] == ROUNDS

    # Flower's rounds 3-4 are the simulation's rounds 3-4: same updates, same global model, and it learned.
    for got, want in zip(history[FIRST_ROUNDS:], expected[FIRST_ROUNDS:], strict=True):
        for key in ("samples", "update_norm", "test_acc", "test_loss", "client_train_loss_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert history[-1]["test_acc"] > 0.7
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    saved = torch.load(resumed_root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["model.head.weight"], resumed.model.head.weight.detach())
    assert resumed_results["federation/final_test_acc"] == pytest.approx(reference_results["federation/final_test_acc"])


def test_flower_clients_keep_their_privacy_accountant_state_across_rounds_and_a_resume(runs) -> None:
    reference_root, _, reference_results = runs["reference"]
    resumed_root, _, resumed_results = runs["resumed"]
    history = history_of(resumed_root)
    steps = [r["client_dp_steps_mean"] for r in history]
    epsilon = [r["client_epsilon_max"] for r in history]
    # every answering client trains in every round: its steps and epsilon compose over all its rounds,
    # the two in-process ones before the resume included (a lost state would restart at round 1's values)
    assert steps == pytest.approx([steps[0] * (r + 1) for r in range(ROUNDS)])
    assert all(a < b for a, b in zip(epsilon, epsilon[1:], strict=False)), epsilon
    expected = history_of(reference_root)
    assert epsilon == pytest.approx([r["client_epsilon_max"] for r in expected], rel=1e-9)
    assert resumed_results["federation/client_epsilon_max"] == pytest.approx(
        reference_results["federation/client_epsilon_max"]
    )

    # the checkpoint Flower wrote holds each client's state after its last round, as the simulation's does
    states = client_states(resumed_root)
    assert states == client_states(reference_root)
    assert sorted(states) == sorted(runs["first_states"]) and len(states) == CLIENTS - 1  # the crashing one: none
    for client, (accountant, _crash) in states.items():
        fits_steps = sum(entry[-1] for entry in accountant["history"])
        before = sum(entry[-1] for entry in runs["first_states"][client][0]["history"])
        assert fits_steps == 2 * before == ROUNDS * steps[0]


def test_a_client_callback_state_that_json_cannot_carry_is_refused_naming_the_runtime() -> None:
    from trustml.federation.flower_runtime import decode_states, encode_states

    states = [{"history": [[0.7, np.float64(0.12), np.int64(16)]], "sigma": torch.tensor(0.5)}]
    assert decode_states(encode_states(states)) == [{"history": [[0.7, 0.12, 16]], "sigma": 0.5}]
    with pytest.raises(ConfigError, match="federation.runtime.engine=simulation"):
        encode_states([{"weights": torch.zeros(3)}])
