"""Federated runs never report success for nothing: failed rounds, runs without training, empty clients, clamping."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from tests.conftest import only_run_dir, read_json, run_cli
from tests.federation.conftest import RaiseOnRow, federation, history_of, run_federation
from trustml.errors import ConfigError
from trustml.federation.options import FederationConfig
from trustml.federation.rounds import ClientsKeepFailingError, round_failure, updated_in_some_round
from trustml.federation.strategies import FedAvg


class FailFirstFits(pl.Callback):
    """A client fault in the first ``n`` client fits of the run (``n=None``: every fit)."""

    federated_scope = "client"
    client_loop_ready = True
    fits = 0  # class attribute: client callbacks are deep-copied per fit

    def __init__(self, n: int | None = None) -> None:
        self.n = n

    def on_fit_start(self, trainer, pl_module) -> None:
        type(self).fits += 1
        if self.n is None or type(self).fits <= self.n:
            raise ValueError("client storage is full")


# --- what a failed round is ---------------------------------------------------------------------------


def _record(**fields: Any) -> dict[str, Any]:
    return {"selected": 3, "answered": 3, "rejected": 0, "aggregated": False, **fields}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(aggregated=True), None),
        (
            _record(selected=0, answered=0),
            "no client was selected (none held data or was eligible, or Poisson selection drew none)",
        ),
        (
            _record(answered=0, last_error="ValueError: boom"),
            "all 3 selected client(s) failed (last: ValueError: boom)",
        ),
        (_record(rejected=3), "all 3 update(s) held NaN/inf and were rejected"),
        (_record(answered=2, rejected=1), "only 1 usable update(s), fewer than federation.server.min_clients=2"),
    ],
)
def test_round_failure_says_why_a_round_left_the_model_unchanged(record: dict, reason: str | None) -> None:
    assert round_failure(record, min_clients=2) == reason


def test_a_run_updated_the_model_only_when_some_round_aggregated() -> None:
    assert not updated_in_some_round([_record(answered=0), _record(rejected=3), _record(selected=0, answered=0)])
    # usable updates below min_clients leave the model unchanged: still a failed run
    assert not updated_in_some_round([_record(answered=0), _record(answered=2, rejected=1)])
    assert updated_in_some_round([_record(answered=0), _record(aggregated=True)])


# --- runs ---------------------------------------------------------------------------------------------


def test_a_run_in_which_every_client_always_fails_ends_failed_not_completed(digits, tmp_path: Path) -> None:
    FailFirstFits.fits = 0
    plugin = federation(
        FedAvg, rounds=2, num_clients=4, clients_per_round=2, seed=0, server={"max_failed_rounds": None}
    )
    with pytest.raises(
        ClientsKeepFailingError,
        match=r"no round of 2 updated the global model, so it is "
        r"untrained: all 2 selected client\(s\) failed \(last: "
        r"ValueError: client storage is full\)",
    ):
        run_federation(plugin, digits, tmp_path, [FailFirstFits()])
    history = history_of(tmp_path)
    assert [r["aggregated"] for r in history] == [False, False]
    assert history[-1]["last_error"] == "ValueError: client storage is full"
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # no "final model" of a failed run


def test_a_run_whose_first_round_failed_but_a_later_one_trained_completes(digits, tmp_path: Path) -> None:
    FailFirstFits.fits = 0
    plugin = federation(FedAvg, rounds=2, num_clients=4, clients_per_round=2, seed=0)
    _, history, results = run_federation(plugin, digits, tmp_path, [FailFirstFits(2)])
    assert [r["aggregated"] for r in history] == [False, True]
    assert results["federation/aggregated_rounds"] == 1.0 and results["federation/failed_clients"] == 2.0


def test_rounds_below_min_clients_count_as_failed_rounds(digits, tmp_path: Path) -> None:
    plugin = federation(
        FedAvg, rounds=5, num_clients=2, clients_per_round=2, seed=0, server={"min_clients": 2, "max_failed_rounds": 2}
    )
    with pytest.raises(
        ClientsKeepFailingError,
        match=r"not updated in 2 rounds in a row \(last round: only 1 usable "
        r"update\(s\), fewer than federation.server.min_clients=2\)",
    ):
        run_federation(plugin, digits, tmp_path, [RaiseOnRow(0)])
    assert len(history_of(tmp_path)) == 2


# --- empty clients and clamped clients_per_round --------------------------------------------------------


def test_clients_per_round_above_num_clients_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ConfigError,
        match=r"federation.selection.clients_per_round=10 exceeds "
        r"federation.partition.num_clients=5: .*lower clients_per_round to at "
        r"most 5",
    ):
        FederationConfig(selection={"clients_per_round": 10}, partition={"num_clients": 5})
    FederationConfig(selection={"clients_per_round": 10}, partition={"num_clients": 5, "kind": "natural"})


def test_more_clients_than_training_samples_is_refused_before_any_round(digits, tmp_path: Path) -> None:
    samples = len(digits.splits["train"])
    plugin = federation(FedAvg, rounds=1, num_clients=samples + 7, clients_per_round=10, seed=0)
    with pytest.raises(
        ConfigError,
        match=rf"federation.partition.num_clients={samples + 7} exceeds the {samples} "
        rf"training samples, so at least 7 clients would hold no data; lower "
        rf"federation.partition.num_clients to at most {samples}",
    ):
        run_federation(plugin, digits, tmp_path)
    assert not (tmp_path / "federation" / "rounds.jsonl").exists()


def test_empty_clients_from_skew_and_the_clamped_rounds_are_stated_in_the_results(
    digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = federation(
        FedAvg,
        rounds=2,
        num_clients=30,
        clients_per_round=30,
        seed=0,
        partition={"kind": "dirichlet_label", "dirichlet_alpha": 0.01},
        client={"local_steps": 1},
    )
    with caplog.at_level(logging.WARNING, logger="trustml.federation.strategies"):
        _, history, results = run_federation(plugin, digits, tmp_path)
    partition = json.loads((tmp_path / "federation" / "partition.json").read_text())
    empty = partition["empty_clients"]
    assert 0 < empty < 30
    assert results["federation/empty_clients"] == float(empty)
    assert results["federation/clamped_rounds"] == 2.0
    assert all(r["eligible"] == r["selected"] == 30 - empty for r in history)
    assert f"{empty} of 30 clients hold no training data" in caplog.text
    assert f"only {30 - empty} clients hold data, fewer than federation.selection.clients_per_round=30" in caplog.text


def test_without_empty_clients_or_clamping_the_results_say_zero(digits, tmp_path: Path) -> None:
    plugin = federation(FedAvg, rounds=1, num_clients=6, clients_per_round=3, seed=0, client={"local_steps": 1})
    _, _, results = run_federation(plugin, digits, tmp_path)
    assert results["federation/empty_clients"] == 0.0 and results["federation/clamped_rounds"] == 0.0


# --- through the CLI: the run record says failed, exit 2 ------------------------------------------------

FED = [
    "federation=fedavg",
    "federation.rounds=1",
    "federation.partition.num_clients=8",
    "federation.selection.clients_per_round=4",
    "trainer.enable_progress_bar=false",
]


def _assert_failed_cleanly(out, tmp_path: Path, message: str, error_type: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("trustml: error:") == 1
    assert message in out.stderr, out.stderr
    run_dir = only_run_dir(tmp_path)
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and record["error"]["type"] == error_type
    assert not (run_dir / "results.json").exists()


def test_dp_sgd_with_batchnorm_is_refused_before_the_first_round(tmp_path: Path) -> None:
    out = run_cli("optimizer=dp_sgd", "model.norm=batch", *FED, cwd=tmp_path)
    _assert_failed_cleanly(
        out,
        tmp_path,
        "DP optimizers need per-sample gradients, but these model layers mix the "
        "samples of a batch: 'body.1' (BatchNorm1d)",
        "ConfigError",
    )
    assert not (only_run_dir(tmp_path) / "federation" / "rounds.jsonl").exists()


def test_a_cli_run_in_which_no_client_trained_is_recorded_failed(tmp_path: Path) -> None:
    out = run_cli(*FED, "federation.client.timeout_s=1e-9", cwd=tmp_path)
    _assert_failed_cleanly(out, tmp_path, "no round of 1 updated the global model", "ClientsKeepFailingError")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["federation.partition.num_clients=5000"],
            "federation.partition.num_clients=5000 exceeds the 1078 training samples",
        ),
        (
            ["federation.selection.clients_per_round=10", "federation.partition.num_clients=5"],
            "federation.selection.clients_per_round=10 exceeds federation.partition.num_clients=5",
        ),
    ],
)
def test_cli_refuses_clients_that_cannot_hold_data_or_be_selected(overrides, message, tmp_path: Path) -> None:
    out = run_cli(*FED, *overrides, cwd=tmp_path)
    _assert_failed_cleanly(out, tmp_path, message, "ConfigError")
