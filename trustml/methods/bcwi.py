"""``method=bcwi``: backward-compatible weight interpolation (Schumann et al., 2023).

The new model is the old model fine-tuned on the updated data (``init_from_old``, as in the paper; any
objective of ``method=pc``, by default plain cross-entropy). After training, its weights are interpolated back
towards the old model's (:mod:`trustml.methods.interpolation`):

- ``weighting=plain``: ``theta = alpha * theta_old + (1 - alpha) * theta_new``;
- ``weighting=fisher``: per parameter, ``theta = (alpha F theta_old + (1 - alpha) theta_new) / (alpha F + 1 - alpha)``
  with ``F`` the old model's diagonal empirical Fisher on ``fisher_split`` (scaled to mean 1);
- ``soup_run_dirs``: ``theta_new`` is the mean of this run's weights and those of these other new runs (BCWI soup).

``new_run_dir`` takes ``theta_new`` from an already trained new run (its ``old_checkpoint``-named checkpoint)
instead of this run's training: with ``trainer.max_epochs=0`` it interpolates that run post hoc (e.g. the Fisher
variant of a plain BCWI run, without training the same model again).

``alpha`` is chosen on the validation split by the rule fixed in :func:`~trustml.methods.interpolation.select_alpha`:
the lowest validation NFR among the grid's alphas whose validation accuracy is within ``accuracy_tolerance`` of
the new model's (alpha 0). The test split is then evaluated with the chosen weights (``test/acc``, ``test/nfr``,
... as ``method=pc`` logs them), ``test/bcwi_alpha`` is the chosen alpha and ``test/new_acc``, ``test/new_nfr``
the untreated new model's. The run directory gets ``bcwi.json`` (the grid's validation and, with
``sweep_test``, test metrics; the choice), ``update_report.md/.json`` (old / new / interpolated on test: error,
NFR, relative NFR, NFI, per-class flips), ``bcwi_sweep.png`` (test NFR vs error over the grid, with
``sweep_test``) and ``checkpoints/interpolated.ckpt`` (the chosen weights, usable as an old model:
``method.old_checkpoint=interpolated``). Interpolation needs one old model of the new model's architecture;
anything else is refused before training.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.methods.base import OptimizerFactory
from trustml.methods.interpolation import (
    AlphaResult,
    check_same_architecture,
    diagonal_fisher,
    interpolate,
    select_alpha,
    soup,
)
from trustml.methods.old_model import check_labels, check_run_dirs, split_batches
from trustml.methods.pc import PCConfig, PositiveCongruentTraining
from trustml.metrics import flip_counts
from trustml.metrics.update_report import plot_sweep, update_report
from trustml.registry import register
from trustml.run_record import load_model_from_run

log = logging.getLogger(__name__)

WEIGHTINGS = ("plain", "fisher")
DEFAULT_ALPHAS = [round(0.1 * i, 1) for i in range(11)]


@dataclass
class BCWIConfig(PCConfig):
    """Options of ``method=bcwi``: those of ``method=pc`` (training objective; default ``untreated``) plus the
    interpolation (see the module doc). ``accuracy_tolerance`` is absolute (0.005 = half a point)."""

    objective: str = "untreated"
    init_from_old: bool = True
    weighting: str = "plain"
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    accuracy_tolerance: float = 0.005
    soup_run_dirs: list[str] = field(default_factory=list)
    fisher_split: str = "train"
    fisher_max_samples: int = 0
    sweep_test: bool = True
    new_run_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.old_run_dirs) > 1:
            raise ConfigError(
                f"method=bcwi interpolates towards one old model, got {len(self.old_run_dirs)} method.old_run_dirs "
                "runs; give one (an ensemble of old models has no single set of weights)"
            )
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"method.weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}")
        if not self.alphas or any(not 0.0 <= float(a) <= 1.0 for a in self.alphas):
            raise ConfigError(f"method.alphas must be a non-empty list of values in [0, 1], got {list(self.alphas)}")
        if 0.0 not in [float(a) for a in self.alphas]:
            raise ConfigError("method.alphas must contain 0 (the new model, the accuracy reference of the rule)")
        if not 0.0 <= self.accuracy_tolerance <= 1.0 or math.isnan(self.accuracy_tolerance):
            raise ConfigError(f"method.accuracy_tolerance must be in [0, 1], got {self.accuracy_tolerance}")
        if self.fisher_split not in ("train", "val"):
            raise ConfigError(f"method.fisher_split must be train or val, got {self.fisher_split!r}")
        if self.fisher_max_samples < 0:
            raise ConfigError(f"method.fisher_max_samples must be >= 0 (0 = all), got {self.fisher_max_samples}")


@register("method", "bcwi", dataclass=BCWIConfig)
class BackwardCompatibleWeightInterpolation(PositiveCongruentTraining):
    """Fine-tunes the old model on the new data, then interpolates the weights back towards the old ones."""

    config: BCWIConfig

    def __init__(self, config: BCWIConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        if config.soup_run_dirs:
            check_run_dirs(config.soup_run_dirs, "method.soup_run_dirs", config.old_checkpoint)
        if config.new_run_dir:
            check_run_dirs([config.new_run_dir], "method.new_run_dir", config.old_checkpoint)
        self.alphas = sorted({float(a) for a in config.alphas})
        self.initialised_from_old = False
        self.selection: AlphaResult | None = None
        self.new_state: dict[str, Tensor] | None = None
        self.fisher: dict[str, Tensor] | None = None
        self.summary: dict[str, Any] = {}
        self.new_test_result: AlphaResult | None = None

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Before anything is built: the old run (and soup runs) complete with their checkpoints."""
        super().validate_config(cfg)
        soup_dirs = list(cfg.method.get("soup_run_dirs") or [])
        if soup_dirs:
            check_run_dirs(soup_dirs, "method.soup_run_dirs", str(cfg.method.old_checkpoint))
        if cfg.method.get("new_run_dir"):
            check_run_dirs([str(cfg.method.new_run_dir)], "method.new_run_dir", str(cfg.method.old_checkpoint))

    # --- the old model: same architecture, and the start of fine-tuning ---------------------------------
    def _model_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def setup(self, stage: str) -> None:
        """Load the old model, refuse another architecture, and start the new model from its weights."""
        old = self._loaded_old_model()
        check_same_architecture(
            old.state_dict(), self.model.state_dict(), f"old ({self.old_run_dirs[0]})", "new (this run's model)"
        )
        if stage == "fit" and self.config.init_from_old and not self.initialised_from_old:
            self.model.load_state_dict(old.state_dict())
            self.initialised_from_old = True

    # --- interpolation at test time --------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, split_name: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(new-model predictions, old-model predictions, labels)`` on a split with the current weights."""
        split = self.trainer.datamodule.splits[split_name]
        was_training = self.model.training
        self.model.eval()
        new, old = [], []
        size = int(getattr(self.trainer.datamodule, "eval_batch_size", 256))
        for x, index in split_batches(split, size, self.device):
            new.append(self.model(x).argmax(dim=-1).cpu())
            old.append(self.old_logits(x, index).argmax(dim=-1).cpu())
        self.model.train(was_training)
        return torch.cat(new), torch.cat(old), split.labels

    def _evaluate_alpha(self, alpha: float, split: str, base: dict[str, Tensor]) -> tuple[AlphaResult, Tensor]:
        self.model.load_state_dict(interpolate(self._old_state(), base, alpha, self.fisher))
        new, old, labels = self._predict(split)
        counts = flip_counts(old, new, labels)
        return AlphaResult(alpha, 1.0 - counts.rates()["er_new"], counts.rates()["nfr"]), new

    def _old_state(self) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in self._loaded_old_model().state_dict().items()}

    def _trained_state(self, run_dir: str) -> dict[str, Tensor]:
        """The weights of another new run, checked against this run's labels and architecture."""
        model, spec = load_model_from_run(run_dir, self.old_checkpoint)
        check_labels(run_dir, spec, self.num_classes, self.label_names)
        state = {k: v.to(self.device) for k, v in model.state_dict().items()}
        check_same_architecture(self._model_state(), state, "this run's", f"new model of {run_dir}")
        return state

    def _soup_base(self, own: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.config.new_run_dir:
            own = self._trained_state(self.config.new_run_dir)
        states = [own]
        states += [self._trained_state(run_dir) for run_dir in self.config.soup_run_dirs]
        return soup(states) if len(states) > 1 else own

    def _compute_fisher(self) -> dict[str, Tensor]:
        split = self.trainer.datamodule.splits[self.config.fisher_split]
        limit = self.config.fisher_max_samples or None
        old = self._loaded_old_model()
        # called from the test loop, which runs under inference mode: gradients need it off and normal tensors
        with torch.inference_mode(False), torch.enable_grad():
            inputs = (_normal_tensors(x) for x, _ in split_batches(split, 1, self.device))
            fisher = diagonal_fisher(old, inputs, scale_to_mean_one=True, max_samples=limit)
        state_keys = dict(old.named_parameters())
        return {k: v for k, v in fisher.items() if k in state_keys}

    def on_test_start(self) -> None:
        """Choose alpha on validation (once per set of trained weights) and load the interpolated weights."""
        self._loaded_old_model()
        if self.selection is None:
            self.new_state = self._soup_base(self._model_state())
            if self.config.weighting == "fisher":
                self.fisher = self._compute_fisher()
            self._select_and_report()
        assert self.new_state is not None and self.selection is not None
        self.model.load_state_dict(interpolate(self._old_state(), self.new_state, self.selection.alpha, self.fisher))

    def _select_and_report(self) -> None:
        base = self.new_state
        assert base is not None
        val = [self._evaluate_alpha(alpha, "val", base)[0] for alpha in self.alphas]
        self.selection = select_alpha(val, self.config.accuracy_tolerance)
        tested_alphas = self.alphas if self.config.sweep_test else sorted({0.0, self.selection.alpha})
        test_predictions, test = {}, []
        for alpha in tested_alphas:
            result, predictions = self._evaluate_alpha(alpha, "test", base)
            test.append(result)
            test_predictions[alpha] = predictions
        _, old_test, labels = self._predict("test")
        reference = next(r for r in test if r.alpha == 0.0)
        self.summary = {
            "weighting": self.config.weighting,
            "soup_size": 1 + len(self.config.soup_run_dirs),
            "accuracy_tolerance": self.config.accuracy_tolerance,
            "rule": "lowest val NFR among alphas with val accuracy >= val accuracy at alpha 0 - accuracy_tolerance",
            "chosen_alpha": self.selection.alpha,
            "val": [r.to_dict() for r in val],
            "test": [r.to_dict() for r in test],
        }
        log.info("BCWI: alpha %.3f chosen on validation (%s)", self.selection.alpha, self.summary["val"])
        self.new_test_result = reference
        if not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.default_root_dir)
        chosen = f"bcwi {self.config.weighting} (alpha {self.selection.alpha:g})"
        variants = {"new (untreated)": test_predictions[0.0], chosen: test_predictions[self.selection.alpha]}
        report = update_report(old_test, variants, labels, self.label_names)
        report.extra["bcwi"] = self.summary
        report.save(run_dir)
        _write_json(run_dir / "bcwi.json", self.summary)
        if self.config.sweep_test:
            flips = {r.alpha: r for r in test}
            old_er = float((old_test != labels).float().mean())
            plot_sweep(
                [(f"{a:g}", 1.0 - flips[a].accuracy, flips[a].nfr) for a in tested_alphas],
                run_dir / "bcwi_sweep.png",
                references=[
                    ("old", old_er, 0.0),
                    (chosen, 1.0 - flips[self.selection.alpha].accuracy, flips[self.selection.alpha].nfr),
                ],
                title=f"BCWI ({self.config.weighting}) on test: alpha from 0 (new) to 1 (old)",
            )

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.selection is None:
            return
        reference = self.new_test_result
        values = {"test/bcwi_alpha": self.selection.alpha}
        if reference is not None:
            values.update({"test/new_acc": reference.accuracy, "test/new_nfr": reference.nfr})
        self.log_dict(values)

    def on_test_end(self) -> None:
        """Save the chosen weights as ``checkpoints/interpolated.ckpt`` (keys as in a Lightning checkpoint)."""
        if self.selection is None or not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / "checkpoints" / "interpolated.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": {f"model.{k}": v.cpu() for k, v in self.model.state_dict().items()}}, tmp)
        tmp.replace(path)


def _normal_tensors(x: Any) -> Any:
    """Copies of the tensors of ``x`` made outside inference mode (autograd refuses inference tensors)."""
    if isinstance(x, Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _normal_tensors(v) for k, v in x.items()}
    return x


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")
