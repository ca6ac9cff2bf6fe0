"""Typed schema of the top-level training config (``conf/train.yaml`` builds on it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class TrainSchema:
    """Top-level options; the groups (data, model, ...) are filled by the defaults list.

    ``ckpt_path``: a checkpoint of an earlier run of the same configuration (``RUN/checkpoints/last.ckpt``) to resume
    training from, whatever the ``federation`` plugin (as ``Trainer.fit(ckpt_path=...)``).
    ``cpu_allocator``: ``retain`` keeps freed C-heap memory in the process instead of page-faulting it back every
    step, ``system`` leaves glibc's defaults (:mod:`trustml.cpu_allocator`).
    """

    task_name: str = "train"
    seed: int | None = None
    tags: list[str] = field(default_factory=list)
    trusted_target_prefixes: list[str] = field(default_factory=list)
    print_results: bool = True
    optimized_metric: str | None = None
    ckpt_path: str | None = None
    cpu_allocator: str = "retain"
    data: Any = None
    model: Any = None
    method: Any = None
    optimizer: Any = None
    federation: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    paths: Any = None
    experiment: Any = None
    hparams_search: Any = None
    debug: Any = None


def register_config_support() -> None:
    """Store :class:`TrainSchema` as ``train_schema`` in Hydra's ConfigStore; add the ``cwd`` resolver.

    ``${cwd:}`` is the directory trustml was started in; unlike ``${hydra:runtime.cwd}`` it also resolves
    where Hydra computes the sweep directory, before any job starts.
    """
    ConfigStore.instance().store(name="train_schema", node=TrainSchema, provider="trustml")
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
