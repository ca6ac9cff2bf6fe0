"""``method=pc``: positive-congruent training against an old model (Yan et al., CVPR 2021).

The new model minimises, per sample, one of (see :mod:`trustml.losses.positive_congruent`):

- ``untreated``: ``CE`` (the baseline update; flips are still measured);
- ``naive``: ``(alpha + beta * 1[old correct]) * CE``;
- ``focal_distillation``: ``CE + weight * (alpha + beta * 1[old correct]) * D(phi_new, phi_old)`` with ``D`` the
  KL divergence at temperature ``tau`` (times ``tau^2``), logit matching (``lm``) or ELODI's logit-difference
  inhibition (``ldi``); ``beta=0`` is plain distillation.

The old model is the best checkpoint of one earlier run, or the logit average of several. Its logits are
computed once per sample before training (train, val and test splits) and looked up by sample id, so an
epoch costs what plain training costs; ``online_old_logits=true`` recomputes them on every training batch
instead (needed when augmentation changes a sample's input between epochs). Validation and test log
``er_old``, ``er_new``, ``nfr``, ``relative_nfr``, ``nfi`` and ``pfr``, and write ``flip_report_<split>.json``
(per-class flips, flipped sample ids; val: of the last validation epoch) into the run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.losses import DISTANCES, focal_distillation_loss, logit_distance, naive_congruent_loss
from trustml.methods.base import Batch, ClassificationMethod, OptimizerFactory
from trustml.methods.old_model import OutputCache, check_run_dirs, load_old_model
from trustml.metrics import FlipMetrics
from trustml.registry import register

log = logging.getLogger(__name__)

OBJECTIVES = ("untreated", "naive", "focal_distillation")


@dataclass
class PCConfig:
    """Options of ``method=pc`` (see the module doc); ``old_run_dirs`` are checked before anything is built."""

    old_run_dirs: list[str] = field(default_factory=list)
    old_checkpoint: str = "best"
    objective: str = "focal_distillation"
    distance: str = "kl"
    weight: float = 1.0
    alpha: float = 1.0
    beta: float = 5.0
    temperature: float = 100.0
    ldi_top_k: int = 10
    ldi_margin: float = 0.0
    ldi_power: float = 2.0
    online_old_logits: bool = False
    old_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"method.objective must be one of {OBJECTIVES}, got '{self.objective}'")
        if self.distance not in DISTANCES:
            raise ConfigError(f"method.distance must be one of {DISTANCES}, got '{self.distance}'")
        if self.weight < 0 or self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"method.weight/alpha/beta must be >= 0, got {self.weight}/{self.alpha}/{self.beta}")


@register("method", "pc", dataclass=PCConfig)
class PositiveCongruentTraining(ClassificationMethod):
    """Trains the new model with a positive-congruent objective against a frozen old model; logs flip metrics."""

    def __init__(self, config: PCConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        check_run_dirs(config.old_run_dirs, "method.old_run_dirs", config.old_checkpoint)
        self.old_run_dirs = [str(d) for d in config.old_run_dirs]
        self.old_checkpoint = config.old_checkpoint
        self.objective = config.objective
        self.distance = logit_distance(
            config.distance,
            temperature=config.temperature,
            top_k=config.ldi_top_k,
            margin=config.ldi_margin,
            power=config.ldi_power,
        )
        self.weight, self.alpha, self.beta = config.weight, config.alpha, config.beta
        self.online_old_logits = config.online_old_logits
        self.old_batch_size = config.old_batch_size
        self.flip_metrics = nn.ModuleDict({split: FlipMetrics(num_classes) for split in ("val", "test")})
        self.label_names: list[str] | None = None
        self.old_logits = OutputCache(self._old_forward)
        # The old model is a frozen input to training, not part of the trained module: kept out of the module
        # tree, it stays out of checkpoints and optimizers and in eval mode.
        object.__setattr__(self, "old_model", None)

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Before anything is built: every old run directory complete with its checkpoint."""
        method = cfg.method
        check_run_dirs(list(method.old_run_dirs), "method.old_run_dirs", str(method.old_checkpoint))

    # --- the objective -------------------------------------------------------------------------------
    def sample_losses(self, logits: Tensor, batch: Batch) -> Tensor:
        """Per-sample loss of the configured objective; uses ``batch["old_logits"]`` (see the module doc)."""
        y = batch["y"]
        if self.objective == "untreated":
            return F.cross_entropy(logits, y, reduction="none")
        if self.objective == "naive":
            return naive_congruent_loss(logits, batch["old_logits"], y, self.alpha, self.beta)
        old = batch["old_logits"]
        return focal_distillation_loss(logits, old, y, self.distance, self.weight, self.alpha, self.beta)

    def prepare_batch(self, batch: Batch) -> Batch:
        """Add ``old_logits`` (from the cache by ``batch["index"]``, or computed online) to a training batch."""
        if self.objective == "untreated":
            return batch
        old = self._old_forward(batch["x"]) if self.online_old_logits else self.old_logits(batch["x"], batch["index"])
        return {**batch, "old_logits": old}

    # --- the old model -------------------------------------------------------------------------------
    def _old_forward(self, x: Any) -> Tensor:
        return self._loaded_old_model()(x).detach()

    def _loaded_old_model(self) -> nn.Module:
        if self.old_model is None:
            datamodule = self.trainer.datamodule
            self.label_names = list(getattr(datamodule, "label_names", []) or []) or None
            old = load_old_model(
                self.old_run_dirs,
                num_classes=self.num_classes,
                label_names=self.label_names,
                input_dim=getattr(datamodule, "input_dim", None),
                new_model=self.model,
                checkpoint=self.old_checkpoint,
            )
            object.__setattr__(self, "old_model", old)
        if self.old_model is None:
            raise RuntimeError("old model failed to load")
        self.old_model.to(self.device)
        return self.old_model

    def setup(self, stage: str) -> None:
        """Load the old model(s) and check them against the data before any training step."""
        self._loaded_old_model()

    def on_fit_start(self) -> None:
        """Compute the old logits of every sample once (all splits; val/test only when computed online)."""
        self._loaded_old_model()
        splits = getattr(self.trainer.datamodule, "splits", {}) or {}
        names = [s for s in ("train", "val", "test") if s in splits and not (s == "train" and self.online_old_logits)]
        start = time.perf_counter()
        for name in names:
            self.old_logits.fill(splits[name], self.old_batch_size, self.device)
        log.info("old-model logits of %s cached in %.2fs", "/".join(names), time.perf_counter() - start)

    # --- evaluation with flip metrics ------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, split: str, batch: Batch) -> None:
        logits = self.model(batch["x"])
        self._log_split(split, F.cross_entropy(logits, batch["y"]), logits, batch["y"])
        old = self.old_logits(batch["x"], batch["index"])
        self.flip_metrics[split].update(old, logits.detach(), batch["y"], batch["index"])

    def on_validation_epoch_start(self) -> None:
        self.flip_metrics["val"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_flips("val")

    def on_fit_end(self) -> None:
        """Save the flip report of the last validation epoch (kept until the next one starts)."""
        self._save_flip_report("val")

    def on_test_epoch_start(self) -> None:
        self.flip_metrics["test"].reset()

    def on_test_epoch_end(self) -> None:
        self._log_flips("test")
        self._save_flip_report("test")

    def _log_flips(self, split: str) -> None:
        metric: FlipMetrics = self.flip_metrics[split]  # type: ignore[assignment]
        if metric.counts().total:
            self.log_dict({f"{split}/{name}": value for name, value in metric.compute().items()})

    def _save_flip_report(self, split: str) -> None:
        metric: FlipMetrics = self.flip_metrics[split]  # type: ignore[assignment]
        if metric.counts().total and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            report = metric.report(class_names=self.label_names)
            report.save(Path(self.trainer.default_root_dir) / f"flip_report_{split}.json")
