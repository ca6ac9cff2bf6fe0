"""Composing a task app's config once, checking it before anything runs, and handing it to Hydra to run.

Hydra's own ``@hydra.main`` composes the config twice (once to learn the run mode, once to run) and a check before
it would compose it again. Here :func:`prepare_launch` composes it once, exactly as Hydra would (same search path,
``--config-path/--config-dir``, run mode), checks it (:func:`check_composed`; each value of a config-group sweep is
composed and checked too, as its config files may change Hydra's own config), and :func:`launch` runs that same
config object with Hydra's job runner (or its sweeper, which composes each job of a sweep itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trustml.cli.option_checks import EXTRA_FOR_HYDRA_OPTION, install_hint
from trustml.errors import ConfigError
from trustml.registry import plugins
from trustml.safety import check_config

CONFIG_MODULE = "trustml.conf"


@dataclass
class LaunchPlan:
    """What :func:`prepare_launch` found: the Hydra instance, run mode, composed config and the directory to lock."""

    hydra: Any
    config_name: str
    mode: RunMode
    cfg: DictConfig
    directory: Path | None
    dir_option: str


def config_path(args: argparse.Namespace) -> str:
    """The primary config location: ``--config-path`` when given, else the packaged ``trustml.conf``."""
    return args.config_path if args.config_path is not None else f"pkg://{CONFIG_MODULE}"


def create_hydra(args: argparse.Namespace, job_name: str) -> Any:
    """A Hydra instance set up as Hydra's ``_run_hydra`` does (search path, ``--config-path/-dir``); the caller
    clears ``GlobalHydra`` when done. Raises :class:`~trustml.errors.ConfigError` when ``--config-dir`` is not a
    directory."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = create_automatic_config_search_path(__file__, None, config_path(args))
    if args.config_dir is not None:
        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            raise ConfigError(f"Additional config directory '{config_dir}' not found")
        search_path.prepend("command-line", f"file://{config_dir}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=job_name, config_search_path=search_path)


def _compose(app: Any, args: argparse.Namespace, config_name: str) -> tuple[RunMode, DictConfig]:
    """The run mode and the config composed in it: one composition, unless the config itself asks for a sweep.

    ``-m`` composes in MULTIRUN mode. Otherwise the config is composed as a single run; when that fails, a config
    that sets ``hydra.mode=MULTIRUN`` (``hparams_search=...``) may still be a valid sweep, so Hydra's own mode
    detection decides and the sweep is composed (only then is the config composed twice).
    """
    overrides = list(args.overrides)
    if args.multirun:  # as Hydra does, the jobs learn that they belong to a sweep from hydra.mode
        sweep_overrides = [*overrides, "hydra.mode=MULTIRUN"]
        return RunMode.MULTIRUN, app.compose_config(
            config_name, sweep_overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
    try:
        cfg = app.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
    except Exception:
        if app.get_mode(config_name=config_name, overrides=overrides) != RunMode.MULTIRUN:
            raise
        return RunMode.MULTIRUN, app.compose_config(
            config_name, overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
    return (RunMode.MULTIRUN if cfg.hydra.mode == RunMode.MULTIRUN else RunMode.RUN), cfg


def compose_message(exc: BaseException) -> str:
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


def cli_prefixes(overrides: list[str]) -> tuple[str, ...]:
    """The ``trusted_target_prefixes`` values given on the command line (all values of a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - composition reports the parse error
        return ()
    found: list[str] = []
    for override in parsed:
        if override.key_or_group != "trusted_target_prefixes" or override.is_delete():
            continue
        if override.is_sweep_override():
            values = [v for item in override.sweep_iterator() for v in (item if isinstance(item, list) else [item])]
        else:
            value = override.value()
            values = value if isinstance(value, list) else [value]
        found += [str(v) for v in values]
    return tuple(found)


def check_prefix_source(composed: list[str], cli: tuple[str, ...]) -> None:
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


#: Checks of a composed config beyond the safety checks every app runs (e.g. ``trustml``'s plugin options).
ConfigCheck = Callable[[DictConfig], None]


def check_composed(cfg: DictConfig, trusted_on_cli: tuple[str, ...], extra_check: ConfigCheck | None = None) -> None:
    """Every check of a composed config (with its ``hydra`` node) that needs no run directory."""
    composed = list(cfg.get("trusted_target_prefixes") or [])
    check_prefix_source(composed, trusted_on_cli)
    check_config(cfg, composed)
    if extra_check is not None:
        extra_check(cfg)


def prepare_launch(
    app: Any, args: argparse.Namespace, config_name: str, extra_check: ConfigCheck | None = None
) -> LaunchPlan:
    """Compose (once) and check everything before Hydra runs; decide the directory to lock. Raises ConfigError."""
    overrides = list(args.overrides)
    trusted = cli_prefixes(overrides)
    try:
        mode, cfg = _compose(app, args, config_name)
        variants = _group_sweep_variants(app, overrides) if mode == RunMode.MULTIRUN else []
        variant_cfgs = [
            (v[-1], app.compose_config(config_name, v, run_mode=mode, with_log_configuration=False)) for v in variants
        ]
    except Exception as exc:  # noqa: BLE001 - every composition error is a user error to report
        raise ConfigError(compose_message(exc)) from None
    check_composed(cfg, trusted, extra_check)
    for choice, variant_cfg in variant_cfgs:
        try:
            check_composed(variant_cfg, trusted, extra_check)
        except ConfigError as exc:
            raise ConfigError(f"with {choice}: {exc}") from None
    option = "hydra.sweep.dir" if mode == RunMode.MULTIRUN else "hydra.run.dir"
    try:
        directory: Path | None = Path(str(OmegaConf.select(cfg, option, throw_on_resolution_failure=True))).absolute()
    except Exception:  # noqa: BLE001 - needs runtime values: the job locks its directory itself
        directory = None
    return LaunchPlan(app, config_name, mode, cfg, directory, option)


def launch(plan: LaunchPlan, task_function: Callable[[DictConfig], Any]) -> Any:
    """Run ``task_function`` on the checked config of ``plan``, as ``Hydra.run`` / ``Hydra.multirun`` do, without
    composing it again (a sweeper composes each of its jobs)."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    cfg = plan.cfg
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    context = HydraContext(config_loader=plan.hydra.config_loader, callbacks=callbacks)
    if plan.mode == RunMode.RUN:
        cfg.hydra.mode = RunMode.RUN
        callbacks.on_run_start(config=cfg, config_name=plan.config_name)
        ret = run_job(
            hydra_context=context,
            task_function=task_function,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
            configure_logging=True,
        )
        callbacks.on_run_end(config=cfg, config_name=plan.config_name, job_return=ret)
        return ret.return_value  # raises the task's exception, if any
    callbacks.on_multirun_start(config=cfg, config_name=plan.config_name)
    sweeper = Plugins.instance().instantiate_sweeper(config=cfg, hydra_context=context, task_function=task_function)
    task_overrides = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
    ret = sweeper.sweep(arguments=task_overrides)
    callbacks.on_multirun_end(config=cfg, config_name=plan.config_name)
    return ret
