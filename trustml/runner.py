"""Builds one experiment from a composed config and runs it: data -> model -> method -> federation -> test.

Before anything is built, the runner checks that every ``_target_`` is trusted, makes each plugin's options
dataclass (its ``__post_init__`` checks run then) and asks each selected plugin class whether the combination
can work (:meth:`~trustml.plugin.Plugin.validate_config`, input kinds). Then every plugin is built from its
config object (:mod:`trustml.plugin`), with the callbacks the plugins ask for
(:meth:`~trustml.plugin.Plugin.runtime_callbacks`). The federation plugin's :class:`~trustml.plugin.FitResult`
and each callback with ``final_results()`` contribute to ``results.json``.
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

from trustml.cpu_allocator import configure_cpu_allocator
from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError, TrustMLError
from trustml.plugin import FitResult, Plugin
from trustml.registry import PLUGIN_GROUPS, assemble_plugins, plugin_class, plugin_config
from trustml.run_record import load_state_dict
from trustml.safety import check_targets

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a finished run produced: final metrics and the spec needed to rebuild its model."""

    results: dict[str, float]
    model_spec: dict[str, Any]


def plugin_classes(cfg: DictConfig) -> dict[str, type[Plugin]]:
    """The class selected in each plugin group (imported and checked against its group, not built)."""
    return {group: plugin_class(group, cfg.get(group) or {}) for group in PLUGIN_GROUPS}


def plugin_configs(cfg: DictConfig) -> dict[str, Any]:
    """Each plugin group's options dataclass instance (the dataclasses' checks run here)."""
    return {group: plugin_config(group, cfg[group]) for group in PLUGIN_GROUPS}


def check_compatibility(cfg: DictConfig, classes: Mapping[str, type[Plugin]], choices: Mapping[str, str]) -> None:
    """Refuse plugin combinations that cannot work, with the reason and the fix."""
    data_kind = classes["data"].input_kind  # type: ignore[attr-defined]
    for group, attribute in (("model", "accepted_input_kinds"), ("method", "supported_input_kinds")):
        kinds = getattr(classes[group], attribute)
        if kinds is not None and data_kind not in kinds:
            raise ConfigError(
                f"{group}={choices.get(group)} works on {sorted(kinds)} inputs but data={choices.get('data')} yields "
                f"'{data_kind}' inputs; choose a matching {group} or data plugin"
            )
    for cls in classes.values():
        cls.validate_config(cfg)


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


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """``params_total``, ``params_trainable`` (``requires_grad``) and ``trainable_fraction`` of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable, "trainable_fraction": trainable / max(total, 1)}


def run(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> RunOutcome:
    """Run the experiment ``cfg`` (its ``seed`` already set) and return its final metrics."""
    choices = dict(choices or {})
    check_targets(cfg, list(cfg.get("trusted_target_prefixes") or []))
    configure_cpu_allocator(str(cfg.get("cpu_allocator", "retain")))
    classes = plugin_classes(cfg)
    configs = plugin_configs(cfg)
    check_compatibility(cfg, classes, choices)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    plugins = assemble_plugins(classes, configs, seed=int(cfg.seed))
    datamodule: TrustDataModule = plugins.datamodule
    method, federation = plugins.method, plugins.federation

    callbacks = [build("callbacks", node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    for cls in classes.values():
        callbacks += cls.runtime_callbacks(cfg, datamodule)
    loggers = [build("logger", node) for node in (cfg.get("logger") or {}).values() if node is not None]

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return build("trainer", cfg.trainer, **{"callbacks": callbacks, "logger": loggers or False, **overrides})

    fit: FitResult = federation.run(method, datamodule, make_trainer, ckpt_path=cfg.get("ckpt_path"))
    trainer = fit.trainer
    results: dict[str, Any] = {**parameter_counts(method.model), **fit.results}
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
