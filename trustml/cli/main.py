"""``trustml``: the Hydra application that composes and runs one experiment (or a sweep with ``-m``).

Before Hydra starts, :func:`main` composes the config exactly as Hydra will (same search path, flags and
run mode, each value of a config-group sweep too) and refuses, with one clear message and exit code 2:

- anything the config may not instantiate, import or set (:mod:`trustml.safety`), Hydra's own config
  (callbacks, launcher, sweeper, logging, job environment) included, before Hydra instantiates any of it;
  ``trusted_target_prefixes`` set by a config file rather than on the command line; ``--experimental-rerun``
  (it unpickles a file);
- options a plugin does not have (``+optimizer.lrr=0.1``), values of the wrong type for a typed option
  (``trainer.max_epochs=abc``) and plugins whose optional extra is not installed (``logger=tensorboard``);
- a run (or sweep) directory that is not writable or that another live run holds (``run.lock``).

The run directory is resolved once and pinned (``hydra.run.dir=...``) so the lock and Hydra agree on it.
A run that fails or is interrupted is recorded ``failed``/``interrupted`` in ``run.json`` with the reason;
the exit code is 2 for the user's input, 1 for other failures (disk full, out of memory, bugs) and
128 + signal number for SIGTERM (143) and SIGINT (130). Every refusal is also recorded under
``logs/failed/<time>/run.json`` when that is writable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trustml.cli.help import print_help
from trustml.cli.option_checks import EXTRA_FOR_HYDRA_OPTION, check_extras, check_options, install_hint
from trustml.config_schema import register_config_support
from trustml.errors import ConfigError
from trustml.registry import load_plugins, plugins
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
from trustml.runner import run
from trustml.safety import check_config, check_hydra_config

log = logging.getLogger("trustml")

CONFIG_MODULE = "trustml.conf"
CONFIG_NAME = "train"

#: The command line as typed (``sys.argv`` gets the pinned run directory appended); recorded in run.json.
_TYPED_COMMAND: list[str] | None = None
#: ``trusted_target_prefixes`` given on the command line (``None`` when trustml was not started by :func:`main`).
_CLI_TRUSTED: tuple[str, ...] | None = None


def format_results(results: dict[str, Any]) -> str:
    """The final metrics as an aligned two-column text table."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in results.items()]
    width = max([len("metric"), *(len(k) for k, _ in rows)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _report_error(message: str) -> None:
    sys.stderr.write(f"trustml: error: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------- the Hydra task


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Hydra task: lock the run directory, record provenance, run the experiment, write results.

    Returns the optimized metric (for hyper-parameter sweepers) or ``None``.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    lock = RunLock(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    try:
        acquired = lock.acquire()
    except ConfigError as exc:
        # no record: the directory belongs to another run, or cannot be written
        _report_error(str(exc) if not multirun else f"job {hydra_cfg.job.num} refused: {exc}")
        sys.exit(2)
    try:
        return _run_job(cfg, hydra_cfg, run_dir, multirun)
    finally:
        if acquired:
            lock.release()


def _run_job(cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    """Record, check and run one job; every ending is recorded (see :func:`_job_failed`)."""
    seed_source = "config"
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31 - 1)
        seed_source = "drawn"
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    record = RunRecord(run_dir)
    command = [sys.argv[0], *_TYPED_COMMAND] if _TYPED_COMMAND is not None else list(sys.argv)
    try:
        record.start(
            seed=int(cfg.seed),
            seed_source=seed_source,
            overrides=list(hydra_cfg.overrides.task),
            source_dir=Path(hydra_cfg.runtime.cwd),
            choices=choices,
            trusted_target_prefixes=list(cfg.get("trusted_target_prefixes") or []),
            command=command,
        )
        _check_job(cfg, hydra_cfg)
        if seed_source == "drawn" and hydra_cfg.output_subdir is not None:
            # Keep the saved config complete: re-running it reproduces this run, drawn seed included.
            OmegaConf.save(cfg, run_dir / hydra_cfg.output_subdir / "config.yaml")
        outcome = run(cfg, choices)
        metric = cfg.get("optimized_metric")
        if metric and metric not in outcome.results:
            raise ConfigError(f"optimized_metric='{metric}' is not among the results {sorted(outcome.results)}")
        record.update(model_spec=outcome.model_spec)
        with finishing():
            record.complete(outcome.results)
    except BaseException as exc:  # noqa: BLE001 - every ending is recorded, then reported or re-raised
        return _job_failed(record, exc, cfg, hydra_cfg, multirun)
    with finishing():
        if cfg.print_results:
            print(f"\nResults of {run_dir}:\n{format_results(outcome.results)}\n", flush=True)
    signum = received_signal()
    if multirun and signum is not None:
        raise RunInterrupted(signum)  # this job completed while being stopped: run no further job
    return float(outcome.results[metric]) if metric else None


def _check_job(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Per-job re-check (a sweeper composes each job itself): Hydra's config and where the trust came from."""
    prefixes = list(cfg.get("trusted_target_prefixes") or [])
    if _CLI_TRUSTED is not None:
        _check_prefix_source(prefixes, _CLI_TRUSTED)
    check_hydra_config(hydra_cfg, prefixes)


def _job_failed(
    record: RunRecord, exc: BaseException, cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool
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
            _report_error(f"the run failed unexpectedly: {reason}\n{where}")
            raise exc
        if multirun and code == 2:
            if cfg.get("optimized_metric"):
                raise exc  # a hyper-parameter sweeper decides what a failed trial means
            # The other jobs of the sweep go on; the sweep summary lists this one as failed and the exit code is 2.
            _report_error(f"job {hydra_cfg.job.num} failed: {reason}\n{where}")
            return None
        _report_error(f"{reason}\n{where}")
    sys.exit(code)


# ---------------------------------------------------------------------------------- checks before Hydra runs


@dataclass
class LaunchPlan:
    """What :func:`prepare_launch` found: run mode, composed base config, the directory to lock and pin."""

    mode: RunMode
    cfg: DictConfig
    directory: Path | None
    dir_option: str
    pin: str | None


@contextmanager
def _hydra_app(args: argparse.Namespace) -> Iterator[Any]:
    """A Hydra instance set up as Hydra's ``_run_hydra`` does (search path, ``--config-path/-dir``)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import SearchPathException

    config_path = args.config_path if args.config_path is not None else f"pkg://{CONFIG_MODULE}"
    search_path = create_automatic_config_search_path(__file__, None, config_path)
    if args.config_dir is not None:
        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            raise SearchPathException(f"Additional config directory '{config_dir}' not found")
        search_path.prepend("command-line", f"file://{config_dir}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name="main", config_search_path=search_path)
    finally:
        GlobalHydra.instance().clear()


def _run_mode(app: Any, args: argparse.Namespace, config_name: str) -> RunMode:
    """The run mode as Hydra decides it: ``-m``, else the config's ``hydra.mode``, else RUN."""
    if args.multirun:
        return RunMode.MULTIRUN
    detected = app.get_mode(config_name=config_name, overrides=list(args.overrides))
    return detected if detected is not None else RunMode.RUN


def _compose_message(exc: BaseException) -> str:
    """A composition error in words; a missing Hydra plugin names the extra that installs it."""
    missing = re.search(r"Could not (?:find|load) '(hydra/(?:sweeper|launcher)/\w+)'", str(exc))
    if missing and missing.group(1) in EXTRA_FOR_HYDRA_OPTION:
        option = missing.group(1)
        extra = EXTRA_FOR_HYDRA_OPTION[option]
        group, name = option.rsplit("/", 1)
        return (
            f"the config selects {group}={name} (e.g. through hparams_search=...), which is not installed: "
            f"it comes with the `{extra}` extra: {install_hint(extra)}"
        )
    message = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) not in message:
        message = f"{message}\n{cause}"
    unknown = re.search(r"Key '([^']+)' not in '(\w+)'\s+full_key: ([\w.]+)", message)
    if unknown:
        key, object_type, full_key = unknown.groups()
        group = full_key.split(".")[0]
        for info in plugins(group).values():
            if info.config_class is not None and info.config_class.__name__ == object_type:
                fields = ", ".join(sorted(f.name for f in dataclasses.fields(info.config_class)))
                return (
                    f"option '{key}' is unknown for {group}={info.name} ({full_key}); valid options: {fields} "
                    f"(trustml --help lists the plugins)"
                )
    return message


def _cli_prefixes(overrides: list[str]) -> tuple[str, ...]:
    """The ``trusted_target_prefixes`` values given on the command line (all values of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group != "trusted_target_prefixes" or override.is_delete():
            continue
        if override.is_sweep_override():
            values = [v for item in override.sweep_iterator() for v in (item if isinstance(item, list) else [item])]
        else:
            value = override.value()
            values = value if isinstance(value, list) else [value]
        found += [str(v) for v in values]
    return tuple(found)


def _check_prefix_source(composed: list[str], cli: tuple[str, ...]) -> None:
    """Refuse trust that a config file (not the command line) adds."""
    from_files = [p for p in composed if p not in cli]
    if from_files:
        raise ConfigError(
            f"trusted_target_prefixes={from_files} is set by a config file; only the command line can extend the "
            f"trusted modules: add trusted_target_prefixes=[{','.join(composed)}] to the command if you trust every "
            f"config file of this run"
        )


def _group_sweep_variants(app: Any, overrides: list[str]) -> list[list[str]]:
    """One override list per option of each config-group sweep (``experiment=a,b``; other sweeps at their first
    value).

    Group options are config files that may set Hydra's own config (logging, environment) per job, so each
    is composed and checked before the sweep starts; value sweeps cannot change Hydra's checked options
    (those must be literal) and are checked in each job before it builds anything.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    first: list[str | None] = []
    for override in parsed:
        if override.is_sweep_override() and override.is_discrete_sweep():
            values = list(override.sweep_string_iterator())
            first.append(f"{override.get_key_element()}={values[0]}" if values else None)
        else:
            first.append(None if override.is_sweep_override() else override.input_line)
    variants = []
    for i, override in enumerate(parsed):
        if not (override.is_sweep_override() and override.is_discrete_sweep()):
            continue
        if not app.config_loader.repository.group_exists(override.key_or_group):
            continue
        others = [o for j, o in enumerate(first) if j != i and o is not None]
        variants += [[*others, f"{override.get_key_element()}={value}"] for value in override.sweep_string_iterator()]
    return variants


def check_composed(cfg: DictConfig, cli_prefixes: tuple[str, ...]) -> None:
    """Every check of a composed config (with its ``hydra`` node) that needs no run directory."""
    composed = list(cfg.get("trusted_target_prefixes") or [])
    _check_prefix_source(composed, cli_prefixes)
    check_config(cfg, composed)
    check_extras(cfg)
    choices = dict(OmegaConf.select(cfg, "hydra.runtime.choices") or {})
    check_options(cfg, choices)


def _quote(value: str) -> str | None:
    """``value`` as a Hydra override value that parses back to itself, or ``None``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "${" in value or "\\" in value:
        return None
    quoted = "'" + value.replace("'", "\\'") + "'"
    try:
        parsed = OverridesParser.create().parse_override(f"x={quoted}").value()
    except Exception:  # noqa: BLE001 - unparseable: do not pin
        return None
    return quoted if parsed == value else None


def prepare_launch(args: argparse.Namespace) -> LaunchPlan:
    """Compose and check everything before Hydra runs; decide the directory to lock. Raises ConfigError."""
    overrides = list(args.overrides)
    config_name = args.config_name if args.config_name is not None else CONFIG_NAME
    cli_prefixes = _cli_prefixes(overrides) if _parses(overrides) else ()
    try:
        with _hydra_app(args) as app:
            mode = _run_mode(app, args, config_name)
            cfg = app.compose_config(config_name, overrides, run_mode=mode, with_log_configuration=False)
            variants = _group_sweep_variants(app, overrides) if mode == RunMode.MULTIRUN else []
            variant_cfgs = [
                (v[-1], app.compose_config(config_name, v, run_mode=mode, with_log_configuration=False))
                for v in variants
            ]
    except Exception as exc:  # noqa: BLE001 - every composition error is a user error to report
        raise ConfigError(_compose_message(exc)) from None
    check_composed(cfg, cli_prefixes)
    for choice, variant_cfg in variant_cfgs:
        try:
            check_composed(variant_cfg, cli_prefixes)
        except ConfigError as exc:
            raise ConfigError(f"with {choice}: {exc}") from None
    option = "hydra.sweep.dir" if mode == RunMode.MULTIRUN else "hydra.run.dir"
    try:
        directory = Path(str(OmegaConf.select(cfg, option, throw_on_resolution_failure=True))).absolute()
    except Exception:  # noqa: BLE001 - needs runtime values: the job locks its directory itself
        return LaunchPlan(mode, cfg, None, option, None)
    quoted = _quote(str(directory))
    return LaunchPlan(mode, cfg, directory, option, f"{option}={quoted}" if quoted else None)


def _parses(overrides: list[str]) -> bool:
    """Whether Hydra's override parser accepts ``overrides``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - composition reports the parse error
        return False
    return True


def _record_compose_failure(argv: list[str], message: str) -> Path | None:
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


def _refuse(argv: list[str], message: str) -> None:
    """Record a refused command under ``logs/failed``, report it in one message, exit 2."""
    run_dir = _record_compose_failure(argv, message)
    where = f"\n(run recorded as failed in {run_dir})" if run_dir is not None else ""
    _report_error(f"{message}{where}")
    sys.exit(2)


_NON_RUN_FLAGS = ("cfg", "info", "hydra_help", "shell_completion", "help")


def main() -> None:
    """Console entry point of ``trustml``."""
    install_signal_handlers()
    logging.raiseExceptions = False  # a full disk must not add logging tracebacks to the one error message
    try:
        _main(sys.argv[1:])
    except RunInterrupted as exc:
        with finishing():
            _report_error(f"{exc} (before the run started or after it was recorded)")
        sys.exit(exc.exit_code)
    finally:
        release_all_locks()


def _main(argv: list[str]) -> None:
    """Parse the command line, check it, lock and pin the run directory, then hand over to Hydra."""
    global _TYPED_COMMAND, _CLI_TRUSTED
    load_plugins()
    register_config_support()
    if "--help" in argv or "-h" in argv:
        code = print_help([arg for arg in argv if arg not in ("--help", "-h")])
        if code:
            sys.exit(code)
        return
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if getattr(args, "experimental_rerun", None) is not None:
        _refuse(
            argv,
            "--experimental-rerun unpickles a file, which can run code; rerun from the saved config instead: "
            "trustml --config-dir RUN_DIR/.hydra --config-name config",
        )
    if any(getattr(args, flag, None) for flag in _NON_RUN_FLAGS):
        train()
        return
    try:
        plan = prepare_launch(args)
    except ConfigError as exc:
        _refuse(argv, str(exc))
    _TYPED_COMMAND = list(argv)
    _CLI_TRUSTED = _cli_prefixes(list(args.overrides))
    if plan.directory is not None:
        try:
            RunLock(plan.directory, plan.dir_option).acquire()
        except ConfigError as exc:
            _refuse(argv, str(exc))
        if plan.pin is not None:
            sys.argv = [sys.argv[0], *argv, plan.pin]
    train()


if __name__ == "__main__":
    main()
