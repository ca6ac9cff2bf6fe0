"""Checks of a composed ``trustml`` config against its plugins, before anything is built: every option a plugin
does not have (``+optimizer.lrr=0.1``), values of the wrong type for a typed option (``trainer.max_epochs=abc``)
and plugins whose optional extra is not installed (``logger=tensorboard``), each as one
:class:`~trustml.errors.ConfigError` naming the option and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import types
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig

from trustml.errors import ConfigError
from trustml.registry import plugins, resolve_target

#: Hydra config keys of Hydra's own (not the run's) that are set by the config loader: never "unknown".
_SPECIAL_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

#: ``_target_`` prefix -> (modules of which one must be importable, the extra that installs them).
EXTRA_FOR_TARGET: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("pytorch_lightning.loggers.TensorBoardLogger", ("tensorboard", "tensorboardX"), "loggers"),
    ("pytorch_lightning.loggers.MLFlowLogger", ("mlflow",), "loggers"),
    ("hydra_plugins.hydra_optuna_sweeper", ("hydra_plugins.hydra_optuna_sweeper",), "sweepers"),
    ("optuna", ("optuna",), "sweepers"),
    ("hydra_plugins.hydra_joblib_launcher", ("hydra_plugins.hydra_joblib_launcher",), "sweepers"),
    ("hydra_plugins.hydra_submitit_launcher", ("hydra_plugins.hydra_submitit_launcher",), "slurm"),
    ("trustml.fairness.callback", ("fairlearn",), "fairness"),
)

#: ``hydra/<group>=<option>`` that exist only with an extra installed.
EXTRA_FOR_HYDRA_OPTION = {
    "hydra/sweeper/optuna": "sweepers",
    "hydra/launcher/joblib": "sweepers",
    "hydra/launcher/submitit_local": "slurm",
    "hydra/launcher/submitit_slurm": "slurm",
}


def install_hint(extra: str) -> str:
    """How to install one of trustml's optional extras."""
    return f'pip install -e ".[{extra}]" (in a source checkout; else pip install "trustml[{extra}]")'


def _node_choice(path: str, choices: dict[str, Any]) -> str:
    """``group=option`` for a top-level plugin node, else the config path."""
    group = path.split(".")[0]
    return f"{group}={choices[group]}" if "." not in path and choices.get(group) else path


def _simple_kinds(annotation: Any) -> set[type] | None:
    """The set of {int, float, bool, NoneType} an annotation allows, or ``None`` when it allows more."""
    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    kinds: set[type] = set()
    for member in members:
        if member is type(None) or member in (int, float, bool):
            kinds.add(member)
        else:
            return None
    return kinds


def _fits(value: Any, kinds: set[type]) -> bool:
    """Whether ``value`` is one of ``kinds`` (an int 0/1 passes for a bool, an int for a float)."""
    if value is None:
        return type(None) in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds or (bool in kinds and value in (0, 1))
    if isinstance(value, float):
        return float in kinds
    return False


def _describe_kinds(kinds: set[type]) -> str:
    """``kinds`` in words ("an integer or null")."""
    names = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    ordered = [names[k] for k in (int, float, bool, type(None)) if k in kinds]
    return " or ".join(ordered)


def _annotations(obj: Any) -> tuple[inspect.Signature | None, dict[str, Any]]:
    """The signature of ``obj`` and its resolved type hints (``None, {}`` when it has no signature)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable forward references: use what the signature holds
        hints = {k: p.annotation for k, p in signature.parameters.items() if not isinstance(p.annotation, str)}
    return signature, hints


def _registered(cls: Any, preferred: str | None) -> tuple[str, type] | None:
    """``("group=name", options dataclass)`` when ``cls`` is a registered plugin class (the ``preferred``
    ``group=name`` when ``cls`` is registered under several names), else ``None``."""
    if not inspect.isclass(cls):
        return None
    target = f"{cls.__module__}.{cls.__qualname__}"
    found = [
        (f"{group}={info.name}", info.config_class)
        for group, named in plugins().items()
        for info in named.values()
        if info.target == target and dataclasses.is_dataclass(info.config_class)
    ]
    return next((item for item in found if item[0] == preferred), found[0] if found else None)


def check_options(cfg: DictConfig, choices: dict[str, Any]) -> None:
    """Refuse options a plugin or class does not have, and wrong-typed values of simply typed options.

    A registered plugin's options are its dataclass fields; any other ``_target_`` node is checked against
    its callable's signature (skipped when it takes ``**kwargs``). Only int/float/bool/null annotations are
    type-checked (the plugins' dataclasses are typed by OmegaConf already). Each target is imported to be
    checked (the run imports it anyway).
    """

    def visit(node: DictConfig, path: str) -> None:
        """Walk the config."""
        if "_target_" in node:
            _check_node(node, path)
        for key in node.keys():
            if path == "" and key == "hydra":
                continue
            try:
                child = node[key]
            except Exception:  # noqa: BLE001 - resolved later, at run time
                continue
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                visit(child, f"{path}.{key}" if path else str(key))

    def _check_node(node: DictConfig, path: str) -> None:
        """Check the option names and simple types of one ``_target_`` node."""
        try:
            target = str(node._target_)
        except Exception:  # noqa: BLE001 - an interpolated target resolves at run time
            return
        keys = [str(k) for k in node.keys() if str(k) not in _SPECIAL_KEYS]
        try:
            obj = resolve_target(target)
        except Exception:  # noqa: BLE001 - reported when the run builds it (with the import error)
            return
        group = path.split(".")[0]
        registered = _registered(obj, f"{group}={choices.get(group)}" if "." not in path else None)
        if registered is not None:
            label, config_class = registered
            fields = sorted(f.name for f in dataclasses.fields(config_class))
            unknown = [k for k in keys if k not in fields]
            if unknown:
                raise ConfigError(
                    f"option '{unknown[0]}' is unknown for {label} ({path}.{unknown[0]}); valid options: "
                    f"{', '.join(fields)} (trustml --help lists the plugins)"
                )
            return
        signature, hints = _annotations(obj)
        if signature is None:
            return
        params = signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            valid = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
            unknown = [k for k in keys if k not in params]
            if unknown:
                raise ConfigError(
                    f"option '{unknown[0]}' is unknown for {_node_choice(path, choices)} ({target}); valid options: "
                    f"{', '.join(valid)}"
                )
        for key in keys:
            kinds = _simple_kinds(hints.get(key)) if key in hints else None
            if not kinds:
                continue
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - resolved at run time
                continue
            if not _fits(value, kinds):
                shown = f"'{value}'" if isinstance(value, str) else value
                raise ConfigError(
                    f"{path}.{key}={shown} is not valid: {key} of {target} must be {_describe_kinds(kinds)} "
                    f"(got {type(value).__name__}); e.g. {path}.{key}={_example(kinds)}"
                )

    visit(cfg, "")


def _example(kinds: set[type]) -> str:
    """A valid example value for ``kinds``."""
    return "10" if int in kinds else "0.5" if float in kinds else "true" if bool in kinds else "null"


def check_extras(cfg: DictConfig) -> None:
    """Refuse a ``_target_`` whose optional extra is not installed, naming the extra and how to install it."""

    def visit(node: Any, path: str) -> None:
        """Walk the config."""
        if isinstance(node, DictConfig):
            if "_target_" in node:
                try:
                    target = str(node._target_)
                except Exception:  # noqa: BLE001 - resolved at run time
                    target = ""
                for prefix, modules, extra in EXTRA_FOR_TARGET:
                    if (target == prefix or target.startswith(prefix + ".")) and not any(map(_importable, modules)):
                        where = path.replace(".", "=", 1) if path.count(".") == 1 else path
                        raise ConfigError(
                            f"{where} ({target}) needs the `{extra}` extra, which is not installed "
                            f"({' / '.join(modules)} missing): {install_hint(extra)}"
                        )
            keys: Any = node.keys()
        elif isinstance(node, ListConfig):
            keys = range(len(node))
        else:
            return
        for key in keys:
            try:
                child = node[key]
            except Exception:  # noqa: BLE001 - resolved at run time
                continue
            visit(child, f"{path}.{key}" if path else str(key))

    visit(cfg, "")


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
