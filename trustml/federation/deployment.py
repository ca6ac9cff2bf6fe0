"""Flower's deployment engine (``federation.runtime.engine=deployment``): a SuperLink and SuperNodes as processes.

A deployed run has three kinds of process, as in a real federation:

- the **SuperLink** (``flower-superlink``), which runs the ServerApp in its own process (``flwr-serverapp``,
  started through ``flower-superexec``) and relays messages between it and the SuperNodes;
- one **SuperNode** per client (``flower-supernode --node-config "partition-id=k"``), which runs the ClientApp in a
  fresh ``flwr-clientapp`` process for every message it receives;
- the **launcher**: the ``trustml`` run itself. It writes a Flower App (``pyproject.toml`` and an app module) into
  ``<run dir>/federation/deployment/app``, submits it with ``flwr run`` (the composed config and the run directory
  go in ``--run-config``), waits for the run to end, then loads the final global model and the round records that
  the ServerApp wrote into the run directory and tests the model as every run does.

With ``federation.runtime.superlink=null`` the launcher starts the SuperLink and one SuperNode per client on
127.0.0.1 (insecure HTTP, free ports, every process in its own process group, logs under
``<run dir>/federation/deployment/``) and stops all of them, and every process they started, when the run ends or
fails (:class:`LocalFederation`). With ``superlink=HOST:PORT`` it submits to a SuperLink whose SuperNodes were
started beforehand on their machines (README, "Federated learning on Flower's deployment engine").

The ServerApp and the ClientApp build the experiment from the run's resolved config exactly as the runner does
(:func:`build_experiment`: same seed, same data split, same initial model) and reuse the pieces of the other
runtimes: the ServerApp runs :meth:`FederatedTraining.run <trustml.federation.strategies.FederatedTraining.run>`
with the Grid (so :func:`~trustml.federation.flower_runtime.serve`: the same round loop, checkpoints and round
records), the ClientApp answers with :func:`~trustml.federation.flower_runtime.describe_reply` /
:func:`~trustml.federation.flower_runtime.train_reply` (the same client training). A SuperNode instantiates only
the built-in trusted targets (:data:`trustml.safety.TRUSTED_PREFIXES` and registered plugins): the config comes
over the network, so its ``trusted_target_prefixes`` are ignored there.

A client whose SuperNode dies mid-round sends no reply: the round counts it as timed out after
``federation.client.timeout_s`` (set it: without it a round waits for every reply) and aggregates the others, as the
simulation does with a failed client.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustml.errors import ConfigError, TrustMLError
from trustml.run_lock import pid_alive

log = logging.getLogger(__name__)

#: run-config keys of the Flower App: the resolved config (JSON text) and the launcher's run directory
CONFIG_KEY = "trustml-config"
RUN_DIR_KEY = "trustml-run-dir"
#: written by the ServerApp into ``<run dir>/federation/``: how the served run ended
OUTCOME_FILE = "deployment_outcome.json"
#: the app module that ``flwr run`` ships (its ``server_app`` and ``client_app`` come from this module)
APP_MODULE = "trustml_flower_app"
CONNECTION = "trustml"

APP_PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "trustml-federation"
version = "1.0.0"
description = "A trustml run on Flower's deployment engine (written by trustml.federation.deployment)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "trustml"

[tool.flwr.app.components]
serverapp = "{module}:server_app"
clientapp = "{module}:client_app"

[tool.flwr.app.config]
{config_key} = ""
{run_dir_key} = ""
"""

APP_SOURCE = '''"""The Flower App of a trustml run: the apps of trustml.federation.deployment."""

from trustml.federation.deployment import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
'''


class DeploymentError(TrustMLError):
    """The deployed run did not finish: a process did not start, the run failed, or it ran out of time."""


# --- building the experiment in the ServerApp's and the ClientApps' processes ---------------------------------
@dataclass
class Experiment:
    """What the runner builds from a config before training: data, method, federation and a Trainer factory."""

    datamodule: Any
    method: Any
    federation: Any
    make_trainer: Any
    callbacks: list[Any]


def build_experiment(config: dict[str, Any], *, trust_config_prefixes: bool) -> Experiment:
    """Build the experiment of the resolved ``config`` as :func:`trustml.runner.run` does, without training it.

    ``trust_config_prefixes``: whether the config's own ``trusted_target_prefixes`` count (not on a SuperNode,
    which receives the config over the network). Seeds everything with ``config["seed"]`` first, so every
    process builds the same split and the same initial model.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from trustml.config_schema import register_config_support
    from trustml.registry import PLUGIN_GROUPS, assemble_plugins, plugin_class, plugin_config
    from trustml.safety import check_targets

    register_config_support()
    cfg = OmegaConf.create(config)
    extra = list(cfg.get("trusted_target_prefixes") or []) if trust_config_prefixes else []
    check_targets(cfg, extra)
    classes = {group: plugin_class(group, cfg.get(group) or {}) for group in PLUGIN_GROUPS}
    configs = {group: plugin_config(group, cfg[group]) for group in PLUGIN_GROUPS}
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    plugins = assemble_plugins(classes, configs, seed=int(cfg.seed))
    datamodule, method, federation = plugins.datamodule, plugins.method, plugins.federation
    callbacks = [
        instantiate(node, _convert_="all") for node in (cfg.get("callbacks") or {}).values() if node is not None
    ]
    for cls in classes.values():
        callbacks += cls.runtime_callbacks(cfg, datamodule)

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return instantiate(cfg.trainer, _convert_="all", **{"callbacks": callbacks, "logger": False, **overrides})

    return Experiment(datamodule, method, federation, make_trainer, callbacks)


def make_server_app() -> Any:
    """The ServerApp of a deployed run: build the experiment, then serve its rounds over the Grid (module doc).

    Writes ``<run dir>/federation/deployment_outcome.json`` (``completed``, or ``failed`` with the error) for the
    launcher, which cannot see this process's exceptions.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_dir = Path(str(context.run_config[RUN_DIR_KEY]))
        outcome = run_dir / "federation" / OUTCOME_FILE
        try:
            config = json.loads(str(context.run_config[CONFIG_KEY]))
            experiment = build_experiment(config, trust_config_prefixes=True)
            experiment.federation.grid = grid
            experiment.federation.run(
                experiment.method, experiment.datamodule, experiment.make_trainer, ckpt_path=config.get("ckpt_path")
            )
        except BaseException as exc:
            outcome.parent.mkdir(parents=True, exist_ok=True)
            outcome.write_text(json.dumps({"status": "failed", "error": f"{type(exc).__name__}: {exc}"}) + "\n")
            raise
        outcome.write_text(json.dumps({"status": "completed"}) + "\n")

    return app


_CLIENTS: dict[str, tuple[Any, Any]] = {}


def client_side(config_text: str) -> tuple[Any, Any]:
    """``(ClientTrainer, ClientPopulation)`` of the run whose config is ``config_text`` (built once per process)."""
    if config_text not in _CLIENTS:
        experiment = build_experiment(json.loads(config_text), trust_config_prefixes=False)
        federation = experiment.federation
        population = federation.population(experiment.datamodule)
        trainer = federation.client_trainer(
            experiment.method, experiment.datamodule, experiment.make_trainer, population, experiment.callbacks
        )
        _CLIENTS.clear()
        _CLIENTS[config_text] = (trainer, population)
    return _CLIENTS[config_text]


def make_client_app() -> Any:
    """The ClientApp of a deployed run: client ``node_config["partition-id"]`` of the run's population."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from trustml.federation.flower_runtime import client_of, describe_reply, train_reply

    app = ClientApp()

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        _, population = client_side(str(context.run_config[CONFIG_KEY]))
        return describe_reply(msg, client_of(context), population)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        trainer, population = client_side(str(context.run_config[CONFIG_KEY]))
        return train_reply(msg, client_of(context), trainer, population)

    return app


# --- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from ``/proc``: Flower starts its SuperExec and app
    processes in new sessions, so a process group alone does not reach them."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def terminate(pids: list[int], grace_s: float) -> None:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to exit, SIGKILL the rest and wait for them to end."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s  # SIGKILL is not instant: return once the kernel has ended them
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment of the Flower processes: this interpreter's scripts first on ``PATH`` (Flower starts
    ``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp`` by name), an own ``FLWR_HOME``, no telemetry, no
    dependency installation (``uv sync``): the apps run in this environment, offline."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes (``partition-id`` 0..N-1) on 127.0.0.1, insecure, free ports.

    Each process starts in its own process group with its output in ``log_dir/<name>.log``. :meth:`stop` ends
    them and every process they started (Flower's SuperExec and app processes included); it runs on leaving the
    ``with`` block, whatever happened inside.
    """

    def __init__(self, num_nodes: int, log_dir: Path, flwr_home: Path) -> None:
        self.num_nodes, self.log_dir, self.flwr_home = num_nodes, log_dir, flwr_home
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=flower_environment(self.flwr_home),
                start_new_session=True,
            )

    def start(self) -> LocalFederation:
        """Start the SuperLink, wait until it accepts connections, then start the SuperNodes."""
        self._start(
            "superlink",
            [_script("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        self.wait_for_port(self.port, "superlink", 60.0)
        for k in range(self.num_nodes):
            self.start_node(k)
        return self

    def start_node(self, k: int) -> None:
        """Start the SuperNode of client ``k`` (``supernode-k``)."""
        self._start(
            f"supernode-{k}",
            [_script("flower-supernode"), "--insecure", "--superlink", self.address, "--host", "127.0.0.1",
             "--port", str(free_port()), "--node-config", f"partition-id={k} num-partitions={self.num_nodes}"],
        )  # fmt: skip

    def wait_for_port(self, port: int, name: str, timeout_s: float) -> None:
        """Wait until ``port`` accepts TCP connections; raise :class:`DeploymentError` (with the log) if ``name``
        exits or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise DeploymentError(f"the Flower {name} exited at start:\n{self.log_tail(name)}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise DeploymentError(f"the Flower {name} did not listen on port {port} within {timeout_s:.0f}s")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of process ``name``'s log."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill_node(self, k: int) -> None:
        """Kill SuperNode ``k`` and its ClientApp processes at once (SIGKILL): a device that vanishes."""
        process = self.processes[f"supernode-{k}"]
        for pid in [*descendants(process.pid), process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()

    def pids(self) -> list[int]:
        """Every live process of this federation (the started ones and all their descendants)."""
        pids = [p.pid for p in self.processes.values() if p.poll() is None]
        return [d for p in self.processes.values() for d in descendants(p.pid)] + pids

    def stop(self, grace_s: float = 5.0) -> None:
        """End every process of the federation: SuperNodes first, then the SuperLink; SIGKILL after ``grace_s``."""
        everything: list[int] = []
        for process in self.processes.values():
            everything += [*descendants(process.pid), process.pid]
        terminate(everything, grace_s)
        for process in self.processes.values():
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # processes a dying parent had just started (re-parented to init before we saw them) still hold our FLWR_HOME
        terminate(flower_processes_under(self.flwr_home), grace_s)

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flower_processes_under(root: Path) -> list[int]:
    """Live processes (other than this one) whose ``FLWR_HOME`` lies in ``root``: the processes of the federations
    started for run directories below ``root``, and only those (every process :class:`LocalFederation` starts, and
    every process those start, carries its ``FLWR_HOME``)."""
    root = root.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"FLWR_HOME="):
                home = Path(item[len(b"FLWR_HOME=") :].decode(errors="replace"))
                if home == root or root in home.parents:
                    found.append(int(entry.name))
    return [pid for pid in found if pid_alive(pid)]


# --- the launcher ----------------------------------------------------------------------------------------------
def write_app(app_dir: Path) -> Path:
    """Write the Flower App (``pyproject.toml`` and the app module) into ``app_dir``; return it."""
    app_dir.mkdir(parents=True, exist_ok=True)
    pyproject = APP_PYPROJECT.format(module=APP_MODULE, config_key=CONFIG_KEY, run_dir_key=RUN_DIR_KEY)
    (app_dir / "pyproject.toml").write_text(pyproject)
    (app_dir / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return app_dir


def write_connection(flwr_home: Path, address: str) -> None:
    """The ``flwr`` CLI's configuration: one SuperLink connection, :data:`CONNECTION`, at ``address`` (insecure)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\ninsecure = true\n'
    )


def submit(app_dir: Path, flwr_home: Path, run_config: dict[str, str], timeout_s: float, log_path: Path) -> None:
    """``flwr run APP trustml --run-config FILE --stream``: start the run and follow its log until it ends.

    Raises :class:`DeploymentError` when ``flwr run`` fails or the run outlives ``timeout_s``.
    """
    overrides = app_dir.parent / "run_config.toml"
    # TOML basic strings take JSON's escapes, so json.dumps writes each value as a TOML string
    overrides.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in run_config.items()))
    argv = [_script("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(overrides), "--stream"]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=flower_environment(flwr_home),
            start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            terminate([*descendants(process.pid), process.pid], 5.0)
            raise DeploymentError(
                f"the deployed run did not end within federation.runtime.deployment_timeout_s={timeout_s:.0f}s "
                f"(log: {log_path})"
            ) from None
        finally:
            if process.poll() is None:
                terminate([*descendants(process.pid), process.pid], 5.0)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DeploymentError(f"flwr run exited with code {code}:\n{tail}")


def run_config_of(run_dir: Path) -> dict[str, str]:
    """The Flower run config of the trustml run in ``run_dir``: its resolved config (from ``run.json``) and
    ``run_dir``. Raises :class:`ConfigError` when ``run_dir`` holds no ``run.json`` (not a ``trustml`` run)."""
    record = run_dir / "run.json"
    if not record.is_file():
        raise ConfigError(
            f"federation.runtime.engine=deployment sends the run's resolved config to the SuperLink from "
            f"{record}, which does not exist: start the run with the trustml command (it writes run.json), or use "
            f"federation.runtime.engine=simulation"
        )
    config = json.loads(record.read_text())["config"]
    return {CONFIG_KEY: json.dumps(config), RUN_DIR_KEY: str(run_dir.resolve())}


def run_deployed(run_dir: Path, runtime: Any, num_clients: int, *, ckpt_path: Any = None) -> list[dict[str, Any]]:
    """Run the trustml run of ``run_dir`` on Flower's deployment engine; return its round records.

    ``runtime`` is the ``federation.runtime`` section; ``num_clients`` SuperNodes are started when it names no
    SuperLink. The ServerApp trains and writes ``federation/`` and ``checkpoints/last.ckpt`` into ``run_dir``
    (``ckpt_path`` reaches it through the config).
    """
    del ckpt_path  # the ServerApp reads it from the config
    run_config = run_config_of(run_dir)
    deploy_dir = run_dir / "federation" / "deployment"
    flwr_home = deploy_dir / "flwr_home"
    app_dir = write_app(deploy_dir / "app")
    outcome = run_dir / "federation" / OUTCOME_FILE
    outcome.unlink(missing_ok=True)
    timeout_s = float(runtime.deployment_timeout_s)
    start = time.monotonic()
    if runtime.superlink is None:
        with LocalFederation(num_clients, deploy_dir, flwr_home) as federation:
            log.info(
                "federation: SuperLink on %s, %d SuperNodes (logs: %s)", federation.address, num_clients, deploy_dir
            )
            write_connection(flwr_home, federation.address)
            submit(app_dir, flwr_home, run_config, timeout_s, deploy_dir / "flwr_run.log")
    else:
        write_connection(flwr_home, runtime.superlink)
        submit(app_dir, flwr_home, run_config, timeout_s, deploy_dir / "flwr_run.log")
    log.info("federation: the deployed run took %.1fs", time.monotonic() - start)
    if not outcome.is_file():
        raise DeploymentError(
            f"the ServerApp ended without writing {outcome}; see {deploy_dir}/flwr_run.log and the SuperLink's log"
        )
    ended = json.loads(outcome.read_text())
    if ended["status"] != "completed":
        raise DeploymentError(f"the deployed run failed in its ServerApp: {ended.get('error')}")
    rounds = run_dir / "federation" / "rounds.jsonl"
    return [json.loads(line) for line in rounds.read_text().splitlines()]
