"""Flower's deployment engine for real: a SuperLink and 2 SuperNodes as processes on 127.0.0.1, driven by ``flwr run``.

One ``trustml ... federation.runtime.engine=deployment`` run (2 clients, 2 rounds of FedAvg on digits) starts the
SuperLink and the SuperNodes, submits the Flower App with ``flwr run`` and stops every process when it ends. The
same config is then federated in this process on the simulation engine, and the two must agree.

Why the final weights can be compared: each message a SuperNode receives runs in a fresh ``flwr-clientapp`` process,
whose torch RNG starts from the run's seed, whereas the simulation trains its clients one after the other in one
process whose RNG moves on. The only random draw of a client fit here is the order in which its loader shuffles
its rows; with one batch per local epoch (``data.batch_size`` above a client's sample count) and no dropout, the
order changes only the summation order of the batch's mean gradient, so the two runs agree to float rounding.

Time: about 2 minutes on a loaded 2-core machine (every ``flwr-clientapp`` process imports torch and Lightning and
builds the data and model: 3 per SuperNode); under a minute on an idle one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import BIN, only_run_dir
from trustml.errors import ConfigError
from trustml.federation.deployment import (
    LocalFederation,
    build_experiment,
    descendants,
    flower_processes_under,
    run_config_of,
    terminate,
)
from trustml.run_lock import pid_alive

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="needs flwr: pip install -e '.[flower]'"
)

ROUNDS = 2
OVERRIDES = (
    "seed=0",
    "data=digits",
    "data.batch_size=2048",  # one batch per local epoch: see module doc
    "model=mlp",
    "model.dropout=0.0",
    "optimizer=sgd",  # plain steps: float rounding stays rounding (Adam's normalisation magnifies it on ~0 gradients)
    "optimizer.lr=0.5",
    "federation=fedavg",
    f"federation.rounds={ROUNDS}",
    "federation.partition.num_clients=2",
    "federation.selection.clients_per_round=2",
    "federation.client.local_epochs=10",
    "federation.client.timeout_s=300",  # only a dead client waits it out; a ClientApp process starts slowly under load
    "trainer.accelerator=cpu",
)


def run_cli_in_own_group(args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``trustml ARGS`` in its own session; on timeout SIGTERM it (its handler stops the federation), then
    SIGKILL what is left."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTML_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("TRUSTML_LOG_DIR", None)
    process = subprocess.Popen(
        [str(BIN / "trustml"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        pytest.fail(f"the deployed run did not end within {timeout_s}s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


@pytest.fixture
def workdir(tmp_path: Path):  # noqa: ANN201
    """``tmp_path``; afterwards, whatever happened, no process of a federation started below it survives."""
    yield tmp_path
    left = flower_processes_under(tmp_path)
    terminate(left, 5.0)
    assert not left, f"processes of the federation outlived the run: {left}"


def test_a_deployed_run_needs_the_run_record_of_a_trustml_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start the run with the trustml command"):
        run_config_of(tmp_path)


def _superexec_below(pid: int) -> bool:
    """Whether a ``flower-superexec`` process runs below ``pid``."""
    for child in descendants(pid):
        try:
            if b"superexec" in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
        except OSError:  # gone meanwhile
            continue
    return False


def test_a_local_federation_stops_every_process_it_started_even_when_the_run_fails(workdir: Path) -> None:
    """Flower starts its SuperExec processes in new sessions: a process group would miss them, the stop must not."""
    with (
        pytest.raises(RuntimeError, match="the run failed"),
        LocalFederation(2, workdir / "logs", workdir / "home") as fed,
    ):
        deadline = time.monotonic() + 120
        nodes = [fed.processes[f"supernode-{k}"].pid for k in range(2)]
        # wait for the SuperExec itself: a SuperNode may run short-lived children before it, which are gone again
        while not all(_superexec_below(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
        started = fed.pids()
        assert all(_superexec_below(pid) for pid in nodes), "the SuperNodes did not start their SuperExec"
        assert len(started) >= 5  # SuperLink, its SuperExec, 2 SuperNodes, their SuperExecs
        raise RuntimeError("the run failed")
    assert not flower_processes_under(workdir)
    assert not [pid for pid in started if pid_alive(pid)], "a started process is still there"


class OneNodeGone:
    """A Grid whose SuperNode 11 has gone away: the SuperLink (node 1) answers its message with an error, as Flower
    1.42 does; node 10 replies with an update."""

    def send_and_receive(self, messages: list, timeout: float | None = None) -> list:
        from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

        replies = []
        for k, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{k}"  # what sending does
            if message.metadata.dst_node_id == 11:
                reply = Message(Error(code=0, reason="SuperNode unavailable"), reply_to=message)
                reply.metadata.__dict__["_src_node_id"] = 1
            else:
                content = {
                    "update": ArrayRecord([np.ones(3, dtype=np.float32)]),
                    "metrics": MetricRecord({"num_examples": 5}),
                    "client_state": ConfigRecord({"callback_states": "[]"}),
                }
                reply = Message(RecordDict(content), reply_to=message)
            replies.append(reply)
        return replies[::-1]


def test_a_reply_from_the_superlink_for_a_vanished_node_counts_against_that_client() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from trustml.federation.flower_runtime import GridTransport

    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a ServerApp process has
    try:
        transport = GridTransport(OneNodeGone(), {0: 10, 1: 11}, timeout_s=5.0)
        updates, failures = transport(1, 0, np.array([1, 0]), torch.zeros(3))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous
    assert [(u.client, u.num_examples) for u in updates] == [(0, 5)]
    assert [(f.client, f.timed_out) for f in failures] == [(1, False)]
    assert "SuperNode unavailable" in failures[0].reason


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_run_on_a_superlink_with_two_supernodes_trains_as_the_simulation_does(workdir: Path) -> None:
    start = time.monotonic()
    done = run_cli_in_own_group(["federation.runtime.engine=deployment", *OVERRIDES], workdir, timeout_s=480)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-4000:]
    run_dir = only_run_dir(workdir)
    deploy = run_dir / "federation" / "deployment"
    # it really ran on the deployment engine: a SuperLink, two SuperNodes, flwr run, a ClientApp process per message
    assert "Successfully started run" in (deploy / "flwr_run.log").read_text()
    for k in range(2):
        node_log = (deploy / f"supernode-{k}.log").read_text()
        assert node_log.count("Start `flwr-clientapp` process") == 1 + ROUNDS, node_log[-2000:]
    assert json.loads((run_dir / "federation" / "deployment_outcome.json").read_text()) == {"status": "completed"}
    assert not flower_processes_under(workdir), "the run left Flower processes behind"

    history = [json.loads(line) for line in (run_dir / "federation" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["answered"], r["aggregated"]) for r in history] == [(1, 2, True), (2, 2, True)]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["federation/final_test_acc"] > 0.85  # the simulation reaches 0.96
    assert results["test/acc"] == pytest.approx(results["federation/final_test_acc"], abs=1e-6)

    # the same config on the simulation engine, in this process
    config = json.loads((run_dir / "run.json").read_text())["config"]
    config["federation"]["runtime"]["engine"] = "simulation"
    config["trainer"]["default_root_dir"] = str(workdir / "simulation")
    experiment = build_experiment(config, trust_config_prefixes=False)
    experiment.federation.run(experiment.method, experiment.datamodule, experiment.make_trainer)
    expected = [json.loads(line) for line in (workdir / "simulation/federation/rounds.jsonl").read_text().splitlines()]
    for got, want in zip(history, expected, strict=True):
        for key in ("samples", "update_norm", "test_acc", "test_loss", "client_train_loss_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    deployed, simulated = (
        weights(run_dir / "checkpoints/last.ckpt"),
        weights(workdir / "simulation/checkpoints/last.ckpt"),
    )
    assert deployed.keys() == simulated.keys()
    for name, value in simulated.items():
        torch.testing.assert_close(deployed[name], value, rtol=1e-5, atol=1e-6)
    print(f"deployed run: {seconds:.1f}s")


def supernode_pid(root: Path, partition: int) -> int | None:
    """The pid of the SuperNode of client ``partition`` of a federation started below ``root``, if it runs."""
    for pid in flower_processes_under(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flower-supernode") for a in argv) and f"partition-id={partition}".encode() in b" ".join(
            argv
        ):
            return pid
    return None


@pytest.mark.slow
def test_a_supernode_killed_mid_round_is_a_failed_client_and_the_run_goes_on(workdir: Path) -> None:
    """3 SuperNodes; SuperNode 2 (and the ClientApp it runs) is SIGKILLed as round 2 starts. Rounds 2 and 3 count it
    as failed (no reply within federation.client.timeout_s) and aggregate the other two, as the simulation does with
    a client that fails. Rounds 2 and 3 each wait federation.client.timeout_s (180 s) for the dead client."""
    overrides = [
        o
        for o in OVERRIDES
        if not o.startswith(
            ("federation.partition", "federation.selection", "federation.rounds", "federation.client.timeout")
        )
    ]
    args = [
        "federation.runtime.engine=deployment",
        *overrides,
        "federation.rounds=3",
        "federation.partition.num_clients=3",
        "federation.selection.clients_per_round=3",
        "federation.client.timeout_s=180",  # what rounds 2 and 3 wait for the dead client
        "federation.server.min_clients=2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTML_CACHE_DIR": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("TRUSTML_LOG_DIR", None)
    process = subprocess.Popen(
        [str(BIN / "trustml"), *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    killed = False
    try:
        deadline = time.monotonic() + 1200
        while process.poll() is None and time.monotonic() < deadline:
            rounds = list(workdir.glob("logs/runs/*/federation/rounds.jsonl"))
            if not killed and rounds and rounds[0].read_text().strip():
                pid = supernode_pid(workdir, 2)
                assert pid is not None, "SuperNode 2 is not running"
                for victim in [*descendants(pid), pid]:  # no SIGTERM: the device vanishes without a word
                    os.kill(victim, signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert killed and process.returncode == 0, out[-4000:]
    run_dir = only_run_dir(workdir)
    history = [json.loads(line) for line in (run_dir / "federation" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["answered"], r["failed"], r["aggregated"]) for r in history] == [
        (3, 0, True),
        (2, 1, True),
        (2, 1, True),
    ]
    assert json.loads((run_dir / "results.json").read_text())["federation/final_test_acc"] > 0.85
