"""``method=bct``: backward-compatible representation learning (Shen et al., CVPR 2020).

The new model (which must expose ``embed(x)`` and a linear ``head``) minimises, per sample,
``CE(head(phi_new(x)), y) + influence_weight * CE(W_old phi_new(x) + b_old, y)``: its own loss plus the
influence loss through the old model's frozen classifier. Classes the old classifier lacks get the
class-mean old embedding of their training samples as a pseudo-classifier. Old label names must be a
prefix of the new ones.

The old model may have another architecture or size (e.g. a 6-layer gallery encoder and a 3-layer query
encoder, as in heterogeneous retrieval, Duggal et al. 2021), as long as it reads the new run's inputs (text
models: the same tokenizer). When the embedding sizes differ, ``projection`` (``auto``, the default, or
``linear``) adds a trained linear map ``P`` from the new embedding to the old one's space:
``phi_new(x) = P e_new(x)`` is then what goes through the old classifier and what is compared with old
embeddings (``projection=none`` refuses differing sizes). ``P`` is part of the method's checkpoint; for testing
it is restored from the best checkpoint together with the model.

At test time the method evaluates compatibility by 1-NN retrieval (queries from ``query_split``, gallery
from ``gallery_split``): the accuracies ``test/retrieval_new_old`` (query model, gallery model),
``test/retrieval_old_old`` and ``test/retrieval_new_new`` are logged with ``test/compatible`` (1 iff
new-vs-old beats old-vs-old), and the old classifier's accuracy on new and old query embeddings as
``test/old_head_acc_new`` / ``test/old_head_acc_old``; all are written to ``compatibility.json`` in the
run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from trustml.errors import CheckpointError, ConfigError
from trustml.losses import extend_classifier, influence_loss
from trustml.methods.base import Batch, ClassificationMethod, OptimizerFactory, selects_per_sample_optimizer
from trustml.methods.old_model import check_inputs, check_run_dirs, embed_split
from trustml.metrics import CompatibilityReport, compatibility_report
from trustml.metrics.compatibility import METRICS
from trustml.registry import register
from trustml.run_record import load_model_from_run

SPLITS = ("train", "val", "test")
PROJECTIONS = ("auto", "linear", "none")
_PER_SAMPLE_REFUSAL = (
    "method=bct trains on embeddings and does its own forward pass; it cannot run with a per-sample-gradient "
    "optimizer (e.g. optimizer=dp_sgd); choose another optimizer"
)


@dataclass
class BCTConfig:
    """Options of ``method=bct``."""

    old_run_dir: str = ""
    old_checkpoint: str = "best"
    influence_weight: float = 1.0
    retrieval_metric: str = "cosine"
    query_split: str = "test"
    gallery_split: str = "train"
    embed_batch_size: int = 1024
    projection: str = "auto"

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"method.projection must be one of {list(PROJECTIONS)}, got {self.projection!r}")
        if self.influence_weight < 0:
            raise ConfigError(f"method.influence_weight must be >= 0, got {self.influence_weight}")
        if self.retrieval_metric not in METRICS:
            raise ConfigError(f"method.retrieval_metric must be one of {METRICS}, got '{self.retrieval_metric}'")
        for option, split in (("query_split", self.query_split), ("gallery_split", self.gallery_split)):
            if split not in SPLITS:
                raise ConfigError(f"method.{option} must be one of {SPLITS}, got '{split}'")


def _check_embedding_model(model: nn.Module, who: str) -> None:
    if not callable(getattr(model, "embed", None)) or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ConfigError(
            f"method=bct needs {who} to expose embed(x) and a linear head (e.g. model=mlp or model=hf_encoder); "
            f"{type(model).__name__} does not"
        )


def _check_old_run(old_run_dir: str, old_checkpoint: str) -> None:
    if not old_run_dir:
        raise CheckpointError("method=bct needs method.old_run_dir=<run directory of the old model>")
    check_run_dirs([old_run_dir], "method.old_run_dir", old_checkpoint)


@register("method", "bct", dataclass=BCTConfig)
class BackwardCompatibleTraining(ClassificationMethod):
    """Trains an embedding model whose features stay compatible with an old model's classifier and gallery."""

    def __init__(self, config: BCTConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        _check_old_run(config.old_run_dir, config.old_checkpoint)
        _check_embedding_model(model, "the new model")
        if self.uses_per_sample_gradients:
            raise ConfigError(_PER_SAMPLE_REFUSAL)
        self.old_run_dir, self.old_checkpoint = config.old_run_dir, config.old_checkpoint
        self.influence_weight = config.influence_weight
        self.retrieval_metric = config.retrieval_metric
        self.query_split, self.gallery_split = config.query_split, config.gallery_split
        self.embed_batch_size = config.embed_batch_size
        self.old_head: tuple[Tensor, Tensor] | None = None
        self.compatibility: CompatibilityReport | None = None
        self.projection_mode = config.projection
        #: ``P``: new embedding -> old embedding space (set when the old model is loaded, if the sizes differ).
        self.projection: nn.Linear | None = None
        object.__setattr__(self, "old_model", None)  # frozen, outside the module tree (see method=pc)

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Before anything is built: no per-sample-gradient optimizer, a completed old run with its checkpoint."""
        method = cfg.method
        if selects_per_sample_optimizer(cfg):
            raise ConfigError(_PER_SAMPLE_REFUSAL)
        _check_old_run(str(method.old_run_dir or ""), str(method.old_checkpoint))

    # --- the old model -------------------------------------------------------------------------------
    def _loaded_old_model(self) -> nn.Module:
        if self.old_model is None:
            object.__setattr__(self, "old_model", self._load_old_model())
        self.old_model.to(self.device)
        return self.old_model

    def _load_old_model(self) -> nn.Module:
        old, spec = load_model_from_run(self.old_run_dir, self.old_checkpoint)
        _check_embedding_model(old, f"the old model of {self.old_run_dir}")
        old_classes = int(spec.get("num_classes", old.head.out_features))
        if old_classes > self.num_classes:
            raise CheckpointError(
                f"old model of {self.old_run_dir} has {old_classes} classes, more than the new data's "
                f"{self.num_classes}; BCT needs the old classes to be a subset of the new ones"
            )
        names = list(getattr(self.trainer.datamodule, "label_names", []) or [])
        old_names = spec.get("label_names")
        if names and old_names is not None and list(old_names) != names[:old_classes]:
            raise CheckpointError(
                f"label map of the old model of {self.old_run_dir} {list(old_names)} is not the start of the new "
                f"data's {names}; class c of the old head must be class c of the new data"
            )
        check_inputs(self.old_run_dir, spec, old, getattr(self.trainer.datamodule, "input_dim", None), self.model)
        old_dim, new_dim = old.head.in_features, self.model.head.in_features
        if old_dim != new_dim and self.projection_mode == "none":
            raise CheckpointError(
                f"old model of {self.old_run_dir} embeds into {old_dim} dimensions, the new model into {new_dim}; "
                "with method.projection=none BCT needs equal embedding sizes (set the new model's last hidden size, "
                "or method.projection=auto to learn a linear map into the old space)"
            )
        if self.projection is None and (self.projection_mode == "linear" or old_dim != new_dim):
            self.projection = nn.Linear(new_dim, old_dim, bias=False).to(self.device)
        return old.eval().requires_grad_(False)

    def compatible_embed(self, x: Any) -> Tensor:
        """The new model's embedding in the old model's space: ``P e_new(x)`` with a projection, else ``e_new(x)``."""
        embeddings = self.model.embed(x)
        return embeddings if self.projection is None else self.projection(embeddings)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the model's trainable parameters and of the projection ``P`` (when there is one)."""
        self._loaded_old_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.projection is not None:
            params += list(self.projection.parameters())
        return self.optimizer_factory(params)

    def on_test_start(self) -> None:
        """Restore ``P`` from the best checkpoint (the runner restores only the model's weights from it)."""
        self._loaded_old_model()
        callback = getattr(self.trainer, "checkpoint_callback", None)
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.projection is None or not best or not Path(best).is_file():
            return
        state = torch.load(best, map_location="cpu", weights_only=True).get("state_dict", {})
        weights = {k[len("projection.") :]: v for k, v in state.items() if k.startswith("projection.")}
        if weights:
            self.projection.load_state_dict(weights)

    def setup(self, stage: str) -> None:
        """Load and check the old model before any training step."""
        self._loaded_old_model()

    def on_fit_start(self) -> None:
        """Freeze the old classifier, widened with class-mean pseudo-classifiers for classes it lacks."""
        old = self._loaded_old_model()
        weight, bias = old.head.weight.detach(), old.head.bias.detach()
        if weight.shape[0] < self.num_classes:
            train = self.trainer.datamodule.splits["train"]
            embeddings = embed_split(old.embed, train, self.embed_batch_size, self.device)
            weight, bias = extend_classifier(weight, bias, embeddings, train.labels.to(self.device), self.num_classes)
        self.old_head = (weight, bias)

    # --- the objective -------------------------------------------------------------------------------
    def bct_losses(self, embeddings: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """``CE(logits, y) + influence_weight * CE(W_old P e + b_old, y)`` per sample, shape ``[B]`` (``P``: the
        projection, identity without one)."""
        if self.old_head is None:
            raise RuntimeError("the old classifier is set in on_fit_start; train through Trainer.fit")
        ce = F.cross_entropy(logits, y, reduction="none")
        mapped = embeddings if self.projection is None else self.projection(embeddings)
        return ce + self.influence_weight * influence_loss(mapped, y, *self.old_head)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        embeddings = self.model.embed(batch["x"])
        logits = self.model.head(embeddings)
        loss = self.bct_losses(embeddings, logits, batch["y"]).mean()
        self._log_split("train", loss, logits, batch["y"])
        return loss

    # --- compatibility evaluation --------------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        """Cross-model 1-NN retrieval on the query/gallery splits; logs and saves the compatibility report."""
        old = self._loaded_old_model()
        splits: dict[str, Any] = self.trainer.datamodule.splits
        query, gallery = splits[self.query_split], splits[self.gallery_split]
        was_training = self.model.training
        self.model.eval()
        size, device = self.embed_batch_size, self.device
        head = self.old_head or (old.head.weight.detach(), old.head.bias.detach())
        report = compatibility_report(
            old_query=embed_split(old.embed, query, size, device),
            new_query=embed_split(self.compatible_embed, query, size, device),
            query_labels=query.labels,
            old_gallery=embed_split(old.embed, gallery, size, device),
            new_gallery=embed_split(self.compatible_embed, gallery, size, device),
            gallery_labels=gallery.labels,
            metric=self.retrieval_metric,
            old_head=head,
        )
        self.model.train(was_training)
        self.compatibility = report
        self.log_dict(
            {
                "test/retrieval_new_old": report.new_old,
                "test/retrieval_old_old": report.old_old,
                "test/retrieval_new_new": report.new_new,
                "test/compatible": float(report.compatible),
                "test/old_head_acc_new": float(report.old_head_new),
                "test/old_head_acc_old": float(report.old_head_old),
            }
        )
        if self.trainer.is_global_zero:
            report.save(Path(self.trainer.default_root_dir) / "compatibility.json")
