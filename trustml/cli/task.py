"""The task wrapper of every Hydra app of trustml (``trustml``, ``trustml-generate``, ``trustml-synth``).

An app is a :class:`TaskApp`: its config, its help and its *body*, a function from the composed config to the final
metrics. :func:`run_app` is the whole command line around it, the same for every app:

- ``--help`` is the app's own help; Hydra's informational flags (``--cfg``, ``--info``, ``--hydra-help``,
  ``--shell-completion``) are Hydra's;
- before anything runs, the config is composed once and checked (:mod:`trustml.cli.compose`): anything it may
  not instantiate, import or set (:mod:`trustml.safety`), trust added by a config file, ``--experimental-rerun``
  (it unpickles a file) and the app's own checks; a run (or sweep) directory that is not writable or that another
  live run holds (``run.lock``, :mod:`trustml.run_lock`) is refused too. Every refusal is one message, exit code 2
  and a record under ``<log dir>/failed/<time>/run.json`` when that is writable;
- each job (one run, or each job of a sweep) locks its directory under ``paths.log_dir``, draws the seed when the
  config leaves it ``null`` (recorded, and saved into ``.hydra/config.yaml``), seeds ``random``, NumPy and (when
  the app uses it) torch, and writes ``run.json`` (:class:`~trustml.run_record.RunRecord`: resolved config,
  overrides, seed, git commit, package versions, status) before the body runs. A body that returns writes
  ``results.json`` atomically and marks the run ``completed``; any other ending is recorded ``failed`` or
  ``interrupted`` with the reason;
- exit codes: 0 completed; 2 the user's input (config, data, checkpoint); 1 any other failure (disk full, out of
  memory, bugs: a bug also prints its traceback); 128 + signal number for SIGINT (130) and SIGTERM (143).
  A failing job of a sweep is recorded and the sweep goes on (its summary lists it; the exit code is 2).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trustml.cli.compose import (
    CONFIG_MODULE,
    ConfigCheck,
    check_prefix_source,
    cli_prefixes,
    config_path,
    create_hydra,
    launch,
    prepare_launch,
)
from trustml.errors import ConfigError
from trustml.run_lock import RunLock, release_all_locks
from trustml.run_record import (
    RunInterrupted,
    RunRecord,
    describe_failure,
    exit_code_for,
    finishing,
    install_signal_handlers,
    received_signal,
)
from trustml.safety import check_hydra_config


@dataclass(frozen=True)
class Job:
    """One job as its body sees it: where it writes, and the config-group choices it was composed with."""

    run_dir: Path
    choices: dict[str, str]
    multirun: bool


@dataclass
class TaskResult:
    """What a body returns: the final metrics (``results.json``) and further fields for ``run.json``."""

    results: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskApp:
    """A Hydra app: ``program`` composes ``conf/<config_name>.yaml`` (which has a top-level ``seed``, ``null`` to
    draw one) and runs ``body`` on it.

    ``prepare`` registers what composing needs (schemas in Hydra's ConfigStore, resolvers); ``check`` adds the app's
    own checks of a composed config; ``imports`` are modules a job imports before its record is written (torch for
    the device description). ``--help`` prints :func:`app_help` (the body's module docstring, those of
    ``help_sections``, the config file), unless ``print_help`` is given: it prints the app's help for the given
    topics and returns the exit code.
    """

    program: str
    config_name: str
    job_name: str
    body: Callable[[DictConfig, Job], TaskResult]
    print_help: Callable[[list[str]], int] | None = None
    help_sections: tuple[object, ...] = ()
    prepare: Callable[[], None] = lambda: None
    check: ConfigCheck | None = None
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Launch:
    """The command line of this process, as typed (recorded in ``run.json``), and the ``trusted_target_prefixes``
    it gives (each job refuses trust that its config files add)."""

    argv: list[str]
    trusted_on_cli: tuple[str, ...]


def format_results(results: dict[str, Any]) -> str:
    """The final metrics as an aligned two-column text table."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in results.items()]
    width = max([len("metric"), *(len(k) for k, _ in rows)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def app_help(app: TaskApp) -> str:
    """The ``--help`` of ``app``: the docstring of its body's module (usage, inputs, outputs), those of
    ``app.help_sections`` (modules or classes that describe its inputs and options), then its config file as shipped
    (``conf/<config_name>.yaml``: each option with its default and comment), instead of Hydra's generic page."""
    module = sys.modules[app.body.__module__]
    parts = [app.program, inspect.cleandoc(module.__doc__ or "")]
    parts += [inspect.cleandoc(extra.__doc__ or "") for extra in app.help_sections]
    config = (files(CONFIG_MODULE) / f"{app.config_name}.yaml").read_text()
    parts.append(
        f"Options (conf/{app.config_name}.yaml as shipped; override any with key=value, add new keys with +key=value,"
        f"\nsweep with -m key=a,b; Hydra's own flags: {app.program} --hydra-help):\n\n{config}"
    )
    return "\n\n".join(parts)


def _report_error(program: str, message: str) -> None:
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.stderr.flush()


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and, when the app imported it, torch (all devices)."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _resolved(cfg: DictConfig) -> Any:
    """The config as plain data, interpolations resolved where they can be (else left as written)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here: record the config as written
        return OmegaConf.to_container(cfg, resolve=False)


# --------------------------------------------------------------------------------------------------- one job


def _task_function(app: TaskApp, launched: _Launch) -> Callable[[DictConfig], Any]:
    """The function Hydra calls for each job: lock the job's directory, then record and run it."""

    def task(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        if follower_process():
            return _run_follower(app, cfg, hydra_cfg)
        run_dir = Path(hydra_cfg.runtime.output_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        lock = RunLock(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
        try:
            acquired = lock.acquire()
        except ConfigError as exc:
            # no record: the directory belongs to another run, or cannot be written
            _report_error(app.program, str(exc) if not multirun else f"job {hydra_cfg.job.num} refused: {exc}")
            sys.exit(2)
        try:
            return _run_job(app, launched, cfg, hydra_cfg, Job(run_dir, _choices(hydra_cfg), multirun))
        finally:
            if acquired:
                lock.release()

    return task


#: Environment variables that give a process's rank in a multi-process (DDP) job: Lightning's launcher (LOCAL_RANK,
#: NODE_RANK), torchrun (RANK) and Slurm (SLURM_PROCID).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def follower_process() -> bool:
    """Whether this process is a rank > 0 of a multi-process (DDP) run: process 0 records the run, not this one."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in RANK_VARIABLES)


def _run_follower(app: TaskApp, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Run the body on a rank > 0 process of a DDP run: no lock, no run record, no results (process 0 writes them);
    the seed is the run's (``seed=<int>``, or the one process 0 drew, which Lightning passes as PL_GLOBAL_SEED)."""
    if cfg.seed is None:
        drawn = os.environ.get("PL_GLOBAL_SEED")
        if drawn is None:
            raise ConfigError("a multi-process run needs seed=<int>: every process must build the same data and model")
        cfg.seed = int(drawn)
    for module in app.imports:
        importlib.import_module(module)
    seed_everything(int(cfg.seed))
    app.body(cfg, Job(Path(hydra_cfg.runtime.output_dir), _choices(hydra_cfg), False))


def _choices(hydra_cfg: DictConfig) -> dict[str, str]:
    return {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}


def _run_job(app: TaskApp, launched: _Launch, cfg: DictConfig, hydra_cfg: DictConfig, job: Job) -> float | None:
    """Record, check and run one job; every ending is recorded (see :func:`_job_failed`)."""
    seed_source = "config"
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31 - 1)
        seed_source = "drawn"
    trusted = list(cfg.get("trusted_target_prefixes") or [])
    record = RunRecord(job.run_dir)
    try:
        for module in app.imports:
            importlib.import_module(module)
        record.start(
            seed=int(cfg.seed),
            seed_source=seed_source,
            overrides=list(hydra_cfg.overrides.task),
            source_dir=Path(hydra_cfg.runtime.cwd),
            task=app.program,
            choices=job.choices,
            trusted_target_prefixes=trusted,
            command=[sys.argv[0], *launched.argv],
            config=_resolved(cfg),
        )
        check_prefix_source(trusted, launched.trusted_on_cli)  # a sweeper composes each job itself: check again
        check_hydra_config(hydra_cfg, trusted)
        if seed_source == "drawn" and hydra_cfg.output_subdir is not None:
            # Keep the saved config complete: re-running it reproduces this run, drawn seed included.
            OmegaConf.save(cfg, job.run_dir / hydra_cfg.output_subdir / "config.yaml")
        seed_everything(int(cfg.seed))
        outcome = app.body(cfg, job)
        metric = cfg.get("optimized_metric")
        if metric and metric not in outcome.results:
            raise ConfigError(f"optimized_metric='{metric}' is not among the results {sorted(outcome.results)}")
        if outcome.record:
            record.update(**outcome.record)
        with finishing():
            record.complete(outcome.results)
    except BaseException as exc:  # noqa: BLE001 - every ending is recorded, then reported or re-raised
        return _job_failed(app.program, record, exc, cfg, hydra_cfg, job.multirun)
    with finishing():
        if cfg.get("print_results"):
            print(f"\nResults of {job.run_dir}:\n{format_results(outcome.results)}\n", flush=True)
    signum = received_signal()
    if job.multirun and signum is not None:
        raise RunInterrupted(signum)  # this job completed while being stopped: run no further job
    return float(outcome.results[metric]) if metric else None


def _job_failed(
    program: str, record: RunRecord, exc: BaseException, cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool
) -> float | None:
    """Record the ending of a job, then report it (one message) and exit, or re-raise a bug for its traceback."""
    with finishing():
        status, reason = describe_failure(exc)
        code = exit_code_for(exc)
        try:
            record.fail(exc)
            where = f"(run recorded as {status} in {record.run_dir})"
        except OSError as write_error:
            kept = f"; {record.path} keeps its previous content" if record.path.exists() else ""
            where = f"(the run could not be recorded: {write_error.strerror or write_error}{kept})"
        expected = code != 1 or isinstance(exc, OSError | MemoryError) or "disk full" in reason
        if not expected:
            _report_error(program, f"the run failed unexpectedly: {reason}\n{where}")
            raise exc
        if multirun and code == 2:
            if cfg.get("optimized_metric"):
                raise exc  # a hyper-parameter sweeper decides what a failed trial means
            # The other jobs of the sweep go on; the sweep summary lists this one as failed and the exit code is 2.
            _report_error(program, f"job {hydra_cfg.job.num} failed: {reason}\n{where}")
            return None
        _report_error(program, f"{reason}\n{where}")
    sys.exit(code)


# ---------------------------------------------------------------------------------------- the command line


def _record_refusal(argv: list[str], message: str) -> Path | None:
    """Record a refused command as a failed run under ``logs/failed/<time>``; ``None`` when not writable."""
    base = Path(os.environ.get("TRUSTML_LOG_DIR") or Path.cwd() / "logs")
    run_dir = base / "failed" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    record = RunRecord(run_dir)
    try:
        record.start(seed=-1, seed_source="none", overrides=argv, source_dir=Path.cwd())
        record.fail(ConfigError(message))
    except OSError:
        return None
    return run_dir


def _refuse(program: str, argv: list[str], message: str) -> None:
    """Record a refused command under ``logs/failed``, report it in one message, exit 2."""
    run_dir = _record_refusal(argv, message)
    where = f"\n(run recorded as failed in {run_dir})" if run_dir is not None else ""
    _report_error(program, f"{message}{where}")
    sys.exit(2)


_NON_RUN_FLAGS = ("cfg", "info", "hydra_help", "shell_completion", "help")


def run_app(app: TaskApp, argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``app``: the command line (``sys.argv[1:]`` by default) checked, locked and run."""
    install_signal_handlers()
    logging.raiseExceptions = False  # a full disk must not add logging tracebacks to the one error message
    try:
        _main(app, list(sys.argv[1:] if argv is None else argv))
    except RunInterrupted as exc:
        with finishing():
            _report_error(app.program, f"{exc} (before the run started or after it was recorded)")
        sys.exit(exc.exit_code)
    finally:
        release_all_locks()


def _main(app: TaskApp, argv: list[str]) -> None:
    """Parse the command line, compose and check it, lock the run directory, then run it with Hydra."""
    if "--help" in argv or "-h" in argv:
        if app.print_help is None:
            sys.stdout.write(app_help(app))
            return
        code = app.print_help([arg for arg in argv if arg not in ("--help", "-h")])
        if code:
            sys.exit(code)
        return
    from hydra._internal.utils import get_args_parser, run_and_report

    parser = get_args_parser()
    args = parser.parse_args(argv)
    if getattr(args, "experimental_rerun", None) is not None:
        _refuse(
            app.program,
            argv,
            "--experimental-rerun unpickles a file, which can run code; rerun from the saved config instead: "
            f"{app.program} --config-dir RUN_DIR/.hydra --config-name config",
        )
    app.prepare()
    launched = _Launch(argv, cli_prefixes(list(args.overrides)))
    config_name = args.config_name if args.config_name is not None else app.config_name
    if any(getattr(args, flag, None) for flag in _NON_RUN_FLAGS):
        from hydra._internal.utils import _run_hydra

        _run_hydra(args, parser, _task_function(app, launched), config_path(args), config_name)
        return
    from hydra.core.global_hydra import GlobalHydra

    try:
        hydra = create_hydra(args, app.job_name)
    except ConfigError as exc:
        _refuse(app.program, argv, str(exc))
    try:
        try:
            plan = prepare_launch(hydra, args, config_name, app.check)
        except ConfigError as exc:
            _refuse(app.program, argv, str(exc))
        if plan.directory is not None and not follower_process():
            try:
                RunLock(plan.directory, plan.dir_option).acquire()
            except ConfigError as exc:
                _refuse(app.program, argv, str(exc))
        run_and_report(lambda: launch(plan, _task_function(app, launched)))
    finally:
        GlobalHydra.instance().clear()
