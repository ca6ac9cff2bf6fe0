"""``method=seq2seq``: maximum-likelihood training of an encoder-decoder on source -> target pairs.

Trains the response model (knowledge + history -> response) or the autoencoder (input -> input) of the control
knobs (issue 6), depending on ``data.task``. The objective is the token-level cross-entropy
``L = -(1/N) sum_{i,t} log p(y_{i,t} | y_{i,<t}, x_i)`` over the ``N`` non-padding target tokens of the batch;
validation and test log it with token accuracy (``val/acc``, what the default checkpoint monitors) and perplexity
``exp(L)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics.text import Perplexity

from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND
from trustml.errors import ConfigError
from trustml.methods.base import OptimizerFactory, selects_per_sample_optimizer
from trustml.models.hf_seq2seq import IGNORE_INDEX
from trustml.plugin import MethodPlugin
from trustml.registry import plugin_class, register


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token negative log-likelihood ``[B, T]`` of ``labels`` under ``logits`` ``[B, T, V]``; 0 at ``-100``."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll.masked_fill(labels == IGNORE_INDEX, 0.0)


def token_accuracy_counts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(number of target tokens whose argmax prediction is right, number of target tokens)."""
    mask = labels != IGNORE_INDEX
    return ((logits.argmax(-1) == labels) & mask).sum(), mask.sum()


@dataclass
class Seq2SeqConfig:
    """Options of ``method=seq2seq`` (the network comes from ``model=hf_seq2seq``)."""


@register("method", "seq2seq", dataclass=Seq2SeqConfig)
class Seq2SeqMethod(MethodPlugin, pl.LightningModule):
    """Teacher-forced token cross-entropy on an :class:`~trustml.models.hf_seq2seq.HFSeq2SeqModel`."""

    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({SEQ2SEQ_INPUT_KIND})

    def __init__(
        self, config: Seq2SeqConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.optimizer_factory = optimizer
        self.perplexity = nn.ModuleDict({split: Perplexity(ignore_index=IGNORE_INDEX) for split in ("val", "test")})

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse models that are not encoder-decoders and optimizers that need per-sample gradients."""
        model_cls = plugin_class("model", cfg.model)
        method = f"method._target_={cfg.method._target_}"
        if SEQ2SEQ_INPUT_KIND not in (model_cls.accepted_input_kinds or ()):
            raise ConfigError(
                f"{method} trains encoder-decoders, but model._target_={cfg.model._target_} is not one; "
                "use model=hf_seq2seq"
            )
        if selects_per_sample_optimizer(cfg):
            raise ConfigError(
                f"{method} does not support per-sample-gradient optimizers ({cfg.optimizer._target_}); "
                "use optimizer=adam or another torch optimizer"
            )

    def _tokens(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        sources = self.model.encode_sources(batch["x"])
        inputs = {k: sources[k].to(self.device) for k in ("input_ids", "attention_mask")}
        labels = self.model.encode_targets([e.target for e in batch["x"]]).to(self.device)
        return inputs, labels

    def _step(self, split: str, batch: dict[str, Any]) -> Tensor:
        inputs, labels = self._tokens(batch)
        logits = self.model(**inputs, labels=labels)
        nll = token_nll(logits, labels)
        correct, count = token_accuracy_counts(logits.detach(), labels)
        loss = nll.sum() / count.clamp(min=1)
        tokens = int(count)
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        if split != "train":
            accuracy = correct.float() / count.clamp(min=1)
            self.log(f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
            self.perplexity[split](logits.detach().float(), labels)
            self.log(f"{split}/perplexity", self.perplexity[split], on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step("test", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
