"""The in-process simulation end to end on real data (scikit-learn digits) with a small MLP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.federation.conftest import (
    ClientPrivacyAccountant,
    RaiseOnRow,
    dp_sgd,
    federation,
    history_of,
    holds_row,
    make_method,
    poisson_digits,
    run_federation,
)
from trustml.errors import CheckpointError
from trustml.federation.flat_state import FlatLayout, get_flat
from trustml.federation.strategies import FedAdam, FedAvg, FederatedTraining, FedProx, FedYogi


class NaNOnRow(RaiseOnRow):
    """Client-side fault: the client holding ``row`` sends back NaN weights."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        if holds_row(trainer, self.row):
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class SlowOnRow(RaiseOnRow):
    """Client-side fault: the client holding ``row`` is a straggler."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        if holds_row(trainer, self.row):
            time.sleep(2.0)


def test_fedavg_learns_digits_under_label_skew_and_writes_its_records(digits, tmp_path) -> None:
    plugin = federation(
        FedAvg,
        rounds=6,
        num_clients=20,
        clients_per_round=10,
        seed=0,
        partition={"kind": "dirichlet_label", "dirichlet_alpha": 1.0},
        client={"local_epochs": 3},
    )
    method, history, results = run_federation(plugin, digits, tmp_path)
    assert [r["round"] for r in history] == list(range(1, 7))
    assert all(r["answered"] == 10 and r["aggregated"] for r in history)
    assert history[-1]["test_acc"] > 0.85 > history[0]["test_acc"]
    assert results["federation/final_test_acc"] == pytest.approx(history[-1]["test_acc"])
    assert results["federation/rounds"] == 6.0 and results["federation/failed_clients"] == 0.0
    stats = json.loads((tmp_path / "federation" / "partition.json").read_text())
    assert stats["num_clients"] == 20 and stats["num_samples"] == len(digits.splits["train"])
    assert len(stats["clients"]) == 20 and "label_entropy_bits" in stats["clients"][0]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["model.head.weight"], method.model.head.weight.detach())


def test_a_thousand_clients_train_on_one_shared_model(digits, tmp_path) -> None:
    method = make_method(digits)
    params_before = [id(p) for p in method.model.parameters()]
    plugin = federation(
        FedAvg,
        rounds=3,
        num_clients=1000,
        clients_per_round=10,
        seed=1,
        partition={"kind": "iid"},
        server={"eval_every": 3},
    )
    _, history, _ = run_federation(plugin, digits, tmp_path, method=method)
    assert all(r["selected"] == 10 and r["answered"] == 10 for r in history)
    assert [id(p) for p in method.model.parameters()] == params_before
    assert "test_acc" not in history[0] and "test_acc" in history[-1]
    stats = json.loads((tmp_path / "federation" / "partition.json").read_text())
    assert stats["num_clients"] == 1000 and stats["samples_per_client"]["max"] <= 2


@pytest.mark.parametrize("client_loop", ["auto", "lightning"])
def test_crashing_nan_and_straggling_clients_are_skipped_and_logged(digits, tmp_path, caplog, client_loop) -> None:
    plugin = federation(
        FedAvg,
        rounds=2,
        num_clients=4,
        clients_per_round=4,
        seed=0,
        client={"timeout_s": 1.5, "loop": client_loop},
        server={"min_clients": 1},
    )
    train_rows = np.arange(len(digits.splits["train"]))
    from trustml.federation.partition import iid_partition

    parts = iid_partition(len(train_rows), 4, np.random.default_rng(plugin.config.partition.seed))
    faults = [RaiseOnRow(int(parts[0][0])), NaNOnRow(int(parts[1][0])), SlowOnRow(int(parts[2][0]))]
    _, history, results = run_federation(plugin, digits, tmp_path, callbacks=faults)
    for record in history:
        assert (record["answered"], record["failed"], record["timed_out"], record["rejected"]) == (2, 1, 1, 1)
        assert record["aggregated"]
    assert results["federation/failed_clients"] == 2.0 and results["federation/rejected_updates"] == 2.0
    assert results["federation/timed_out_clients"] == 2.0
    assert "simulated client crash" in caplog.text
    assert "holds NaN/inf and is rejected" in caplog.text
    assert "federation.client.timeout_s=1.5" in caplog.text


def test_a_round_without_min_clients_leaves_the_global_model_unchanged(digits, tmp_path) -> None:
    method = make_method(digits)
    layout = FlatLayout.of(method.model)
    start = get_flat(method.model, layout)
    plugin = federation(FedAvg, rounds=1, num_clients=2, clients_per_round=2, seed=0, server={"min_clients": 2})
    from trustml.federation.partition import iid_partition
    from trustml.federation.rounds import ClientsKeepFailingError

    parts = iid_partition(len(digits.splits["train"]), 2, np.random.default_rng(0))
    # the only round failed, so the run's model is the untrained one: the run fails rather than completes
    with pytest.raises(ClientsKeepFailingError, match="fewer than federation.server.min_clients=2"):
        run_federation(plugin, digits, tmp_path, callbacks=[RaiseOnRow(int(parts[0][0]))], method=method)
    history = history_of(tmp_path)
    assert history[0]["answered"] == 1 and not history[0]["aggregated"]
    torch.testing.assert_close(get_flat(method.model, layout), start)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_run_ends(digits, tmp_path) -> None:
    options = {
        "num_clients": 30,
        "clients_per_round": 5,
        "seed": 3,
        "partition": {"kind": "dirichlet_label", "dirichlet_alpha": 0.5},
        "selection": {"scheme": "activity"},
    }
    torch.manual_seed(123)
    full, full_history, _ = run_federation(federation(FedAdam, rounds=4, **options), digits, tmp_path / "full")
    torch.manual_seed(123)
    run_federation(federation(FedAdam, rounds=2, **options), digits, tmp_path / "split")
    torch.manual_seed(999)  # the resumed process starts from another RNG state; the checkpoint restores it
    resumed, resumed_history, _ = run_federation(federation(FedAdam, rounds=4, **options), digits, tmp_path / "split")
    layout = FlatLayout.of(full.model)
    torch.testing.assert_close(get_flat(resumed.model, layout), get_flat(full.model, layout))
    assert [r["test_acc"] for r in resumed_history] == [r["test_acc"] for r in full_history]


def test_ckpt_path_continues_another_runs_round_checkpoint_in_a_new_run_directory(digits, tmp_path) -> None:
    options = {"num_clients": 8, "clients_per_round": 3, "seed": 2}
    torch.manual_seed(5)
    full, full_history, _ = run_federation(federation(FedAvg, rounds=3, **options), digits, tmp_path / "full")
    torch.manual_seed(5)
    run_federation(federation(FedAvg, rounds=2, **options), digits, tmp_path / "first")
    torch.manual_seed(77)
    continued, history, results = run_federation(
        federation(FedAvg, rounds=3, **options), digits, tmp_path / "second", ckpt_path=tmp_path / "first"
    )
    layout = FlatLayout.of(full.model)
    torch.testing.assert_close(get_flat(continued.model, layout), get_flat(full.model, layout))
    assert [r["test_acc"] for r in history] == [r["test_acc"] for r in full_history]
    assert results["federation/rounds"] == 3.0
    with pytest.raises(
        CheckpointError,
        match=r"num_clients: saved 8 vs now 9\); resume with the same options, or "
        r"give ckpt_path",
    ):
        other = {**options, "num_clients": 9}
        run_federation(federation(FedAvg, rounds=3, **other), digits, tmp_path / "third", ckpt_path=tmp_path / "first")


def test_resuming_with_other_options_is_refused_and_resume_false_starts_over(digits, tmp_path) -> None:
    run_federation(federation(FedAvg, rounds=1, num_clients=5, clients_per_round=2, seed=0), digits, tmp_path)
    with pytest.raises(CheckpointError, match=r"num_clients: saved 5 vs now 6"):
        run_federation(federation(FedAvg, rounds=2, num_clients=6, clients_per_round=2, seed=0), digits, tmp_path)
    restart = federation(FedAvg, rounds=2, num_clients=6, clients_per_round=2, seed=0, runtime={"resume": False})
    _, history, _ = run_federation(restart, digits, tmp_path)
    assert [r["round"] for r in history] == [1, 2]


def test_fedprox_keeps_client_updates_closer_to_the_global_model(digits, tmp_path) -> None:
    options = {"rounds": 1, "num_clients": 5, "clients_per_round": 5, "seed": 0}
    _, plain, _ = run_federation(federation(FedAvg, client={"local_epochs": 3}, **options), digits, tmp_path / "avg")
    _, prox, _ = run_federation(
        federation(FedProx, client={"local_epochs": 3, "proximal_mu": 1.0}, **options), digits, tmp_path / "prox"
    )
    assert prox[0]["update_norm"] < 0.8 * plain[0]["update_norm"]


@pytest.mark.parametrize("plugin_cls", [FedAdam, FedYogi])
def test_adaptive_server_optimizers_learn(plugin_cls, digits, tmp_path) -> None:
    plugin = federation(plugin_cls, rounds=5, num_clients=10, clients_per_round=5, seed=0, server={"lr": 0.03})
    _, history, _ = run_federation(plugin, digits, tmp_path)
    assert history[-1]["test_acc"] > 0.7


def test_local_steps_bound_the_work_per_client(digits, tmp_path) -> None:
    plugin = federation(FedAvg, rounds=1, num_clients=2, clients_per_round=2, seed=0, client={"local_steps": 2})
    _, history, _ = run_federation(plugin, digits, tmp_path)
    assert history[0]["answered"] == 2


def test_continual_setting_grows_each_client_window_up_to_the_storage_cap(digits, tmp_path) -> None:
    def continual(**partition: int) -> FederatedTraining:
        partition = {"setting": "continual", "num_periods": 4, **partition}
        return federation(FedAvg, rounds=4, num_clients=10, clients_per_round=10, seed=0, partition=partition)

    _, history, _ = run_federation(continual(), digits, tmp_path / "uncapped")
    samples = [r["samples"] for r in history]
    assert samples == sorted(samples) and samples[-1] == len(digits.splits["train"])
    assert samples[0] == pytest.approx(samples[-1] / 4, rel=0.05)
    _, history, _ = run_federation(continual(storage_cap=40), digits, tmp_path / "capped")
    assert all(r["samples"] <= 400 for r in history) and history[-1]["samples"] == 400
    stats = json.loads((tmp_path / "capped" / "federation" / "partition.json").read_text())
    assert stats["num_periods"] == 4 and stats["held_samples_per_period"][-1] == 400


def dp_fedavg(rounds: int, **privacy: float) -> FederatedTraining:
    """DP-FedAvg: 20 clients, 5 per round in expectation (Poisson selection), updates clipped to norm 1."""
    return federation(
        FedAvg,
        rounds=rounds,
        num_clients=20,
        clients_per_round=5,
        seed=0,
        selection={"scheme": "poisson"},
        privacy={"clip_norm": 1.0, **privacy},
    )


def test_dp_fedavg_accounts_user_level_epsilon_every_round(digits, tmp_path) -> None:
    _, history, results = run_federation(dp_fedavg(3, noise_multiplier=1.0), digits, tmp_path)
    eps = [r["dp_epsilon"] for r in history]
    assert 0 < eps[0] < eps[1] < eps[2]
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.0, sample_rate=5 / 20)
    assert eps[-1] == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert results["federation/dp_epsilon"] == pytest.approx(eps[-1])


def test_dp_fedavg_calibrated_for_a_target_epsilon_spends_it_over_the_planned_rounds(digits, tmp_path) -> None:
    _, history, results = run_federation(dp_fedavg(4, target_epsilon=2.0), digits, tmp_path)
    assert len(history) == 4 and all(r["aggregated"] for r in history)
    assert 2.0 - 0.05 <= results["federation/dp_epsilon"] <= 2.0  # calibrated to Opacus' tolerance, from below
    assert history[1]["dp_epsilon"] < 2.0 - 0.05  # not spent early


def test_example_level_dp_sgd_reports_each_client_epsilon_composed_over_its_rounds(tmp_path) -> None:
    datamodule = poisson_digits()
    method = make_method(datamodule, optimizer=dp_sgd(lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=0))
    plugin = federation(FedAvg, rounds=2, num_clients=4, clients_per_round=4, seed=0)
    _, history, results = run_federation(
        plugin, datamodule, tmp_path, callbacks=[ClientPrivacyAccountant()], method=method
    )
    first, second = history
    assert first["answered"] == second["answered"] == 4
    assert second["client_dp_steps_mean"] == pytest.approx(2 * first["client_dp_steps_mean"])
    assert second["client_epsilon_max"] > first["client_epsilon_max"] > 0
    assert results["federation/client_epsilon_max"] == pytest.approx(second["client_epsilon_max"])


def test_a_killed_run_resumes_from_its_last_completed_round(tmp_path) -> None:
    """SIGKILL a federation process after round 2 is checkpointed; a new process finishes it identically.

    The uninterrupted reference runs in this process (the same ``killable_run.main``) while the process to kill
    starts up; only the killed run and its resumption pay a Python start-up.
    """
    import os
    import signal
    import subprocess
    import sys

    from tests.federation.killable_run import main as federate

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "tests.federation.killable_run"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, str(killed), "0.5"], env=env, cwd=repo)
    try:
        federate(tmp_path / "whole", 0.0)
        rounds_file = killed / "federation" / "rounds.jsonl"
        deadline = time.monotonic() + 240
        while not (rounds_file.is_file() and len(rounds_file.read_text().splitlines()) >= 2):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "round 2 was never checkpointed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    done_before_kill = len(rounds_file.read_text().splitlines())
    assert 2 <= done_before_kill < 5 and not (killed / "final.pt").exists()

    subprocess.run([*command, str(killed), "0"], env=env, cwd=repo, check=True, timeout=300)
    history = history_of(killed)
    assert [r["round"] for r in history] == [1, 2, 3, 4, 5]
    whole_history = history_of(tmp_path / "whole")
    assert [r["test_acc"] for r in history] == [r["test_acc"] for r in whole_history]
    whole = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)
    resumed = torch.load(killed / "final.pt", weights_only=True)
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value)


class AlwaysRaise(pl.Callback):
    """A systematic client fault (every client fails the same way)."""

    federated_scope = "client"

    def on_fit_start(self, trainer, pl_module) -> None:
        raise ValueError("data.batch_size does not fit the client")


def test_a_systematic_client_failure_stops_the_run_with_its_reason(digits, tmp_path) -> None:
    from trustml.federation.rounds import ClientsKeepFailingError

    plugin = federation(FedAvg, rounds=10, num_clients=4, clients_per_round=2, seed=0, server={"max_failed_rounds": 2})
    with pytest.raises(ClientsKeepFailingError, match="in 2 rounds in a row .*data.batch_size does not fit"):
        run_federation(plugin, digits, tmp_path, callbacks=[AlwaysRaise()])
    assert len(history_of(tmp_path)) == 2
