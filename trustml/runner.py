"""Builds one experiment from a composed config and runs it: data -> model -> method -> federation -> test.

Before anything is built, the runner checks that every ``_target_`` is trusted and that the selected
plugins can work together. Plugin classes take part through optional hooks:

- ``validate_config(cfg)`` (classmethod): raise :class:`~trustml.errors.ConfigError` when the composed
  config cannot work with this plugin;
- ``runtime_callbacks(cfg, datamodule)`` (classmethod): extra Lightning callbacks the plugin needs;
- ``accepted_input_kinds`` / ``supported_input_kinds`` (models / methods) against the data's
  ``input_kind``.
A callback with ``final_results()`` contributes to ``results.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError, TrustMLError
from trustml.registry import PLUGIN_GROUPS, resolve_target
from trustml.run_record import load_state_dict
from trustml.safety import check_targets

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a finished run produced: final metrics and the spec needed to rebuild its model."""

    results: dict[str, float]
    model_spec: dict[str, Any]


def plugin_classes(cfg: DictConfig) -> dict[str, type]:
    """The class selected in each plugin group (imported, not instantiated)."""
    classes = {}
    for group in PLUGIN_GROUPS:
        node = cfg.get(group)
        if node is None or "_target_" not in node:
            raise ConfigError(f"config group '{group}' is not selected; add {group}=<plugin> (see trustml --help)")
        try:
            classes[group] = resolve_target(str(node._target_))
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{group}._target_='{node._target_}' cannot be imported: {exc}") from None
    return classes


def check_compatibility(cfg: DictConfig, classes: Mapping[str, type], choices: Mapping[str, str]) -> None:
    """Refuse plugin combinations that cannot work, with the reason and the fix."""
    data_kind = getattr(classes["data"], "input_kind", "features")
    for group, attribute in (("model", "accepted_input_kinds"), ("method", "supported_input_kinds")):
        kinds = getattr(classes[group], attribute, None)
        if kinds is not None and data_kind not in kinds:
            raise ConfigError(
                f"{group}={choices.get(group)} works on {sorted(kinds)} inputs but data={choices.get('data')} yields "
                f"'{data_kind}' inputs; choose a matching {group} or data plugin"
            )
    for cls in classes.values():
        validate = getattr(cls, "validate_config", None)
        if validate is not None:
            validate(cfg)


def build(group: str, node: Any, **runtime: Any) -> Any:
    """Instantiate a config node; user errors raised inside come out unwrapped, type errors as ConfigError."""
    try:
        return instantiate(node, _convert_="all", **runtime)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, TrustMLError):
            raise cause from None
        if isinstance(cause, TypeError | ValueError) or cause is None:
            raise ConfigError(f"{group}: {cause or exc}") from None
        raise


def run(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> RunOutcome:
    """Run the experiment ``cfg`` (its ``seed`` already set) and return its final metrics."""
    choices = dict(choices or {})
    check_targets(cfg, list(cfg.get("trusted_target_prefixes") or []))
    classes = plugin_classes(cfg)
    check_compatibility(cfg, classes, choices)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule: TrustDataModule = build("data", cfg.data)
    datamodule.setup("fit")
    model = build("model", cfg.model, num_classes=datamodule.num_classes, input_dim=datamodule.input_dim)
    if datamodule.input_kind == "text":
        datamodule.map_inputs(model.featurize)
    method = build(
        "method",
        cfg.method,
        model=model,
        optimizer=build("optimizer", cfg.optimizer),
        num_classes=datamodule.num_classes,
    )
    federation = build("federation", cfg.federation)

    callbacks = [build("callbacks", node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    for cls in classes.values():
        runtime_callbacks = getattr(cls, "runtime_callbacks", None)
        if runtime_callbacks is not None:
            callbacks += runtime_callbacks(cfg, datamodule)
    loggers = [build("logger", node) for node in (cfg.get("logger") or {}).values() if node is not None]

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return build("trainer", cfg.trainer, **{"callbacks": callbacks, "logger": loggers or False, **overrides})

    trainer = federation.run(method, datamodule, make_trainer)
    results: dict[str, float] = {}
    checkpoint = next(
        (cb for cb in callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint) and cb.monitor is not None), None
    )
    if checkpoint is not None and checkpoint.best_model_path:
        method.model.load_state_dict(load_state_dict(checkpoint.best_model_path))
        if checkpoint.best_model_score is not None:
            results[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    tested = trainer.test(method, datamodule=datamodule, verbose=False)
    for metrics in tested:
        results.update({k: float(v) for k, v in metrics.items()})
    for cb in callbacks:
        final = getattr(cb, "final_results", None)
        if final is not None:
            results.update(
                {k: float(v) if isinstance(v, int | float | torch.Tensor) else v for k, v in final().items()}
            )
    spec = {
        "config": OmegaConf.to_container(cfg.model, resolve=True),
        "num_classes": datamodule.num_classes,
        "input_dim": datamodule.input_dim if datamodule.input_kind == "features" else None,
        "label_names": datamodule.label_names,
    }
    return RunOutcome(results=dict(sorted(results.items())), model_spec=spec)
