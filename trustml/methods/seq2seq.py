"""``method=seq2seq``: maximum-likelihood training of an encoder-decoder on source -> target pairs.

Trains the response model (knowledge + history -> response) or the autoencoder (input -> input) of the control
knobs (issue 6), depending on ``data.task``. The objective is the token-level cross-entropy
``L = -(1/N) sum_{i,t} log p(y_{i,t} | y_{i,<t}, x_i)`` over the ``N`` non-padding target tokens of the batch;
validation and test log it with token accuracy (``val/acc``, what the default checkpoint monitors) and perplexity
``exp(L)``.

With a per-sample-gradient optimizer (``optimizer=dp_sgd|dp_adam``) each example is one DP unit: its loss is its
own mean token NLL, ``l_i = (1/T_i) sum_t -log p(y_{i,t} | y_{i,<t}, x_i)``, and the optimizer clips and noises the
gradients of these (:meth:`Seq2SeqMethod.sample_losses`) on the batch tokenized into tensors
(:class:`TeacherForcedLogits`). A word-embedding table tied to the LM head is one parameter owned by two modules;
the layerwise per-sample engine adds both modules' shares (its attribution check, run once per model, confirms it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics.text import Perplexity

from trustml.data.text_lm import LM_INPUT_KIND
from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND
from trustml.errors import ConfigError
from trustml.methods.base import OptimizerFactory
from trustml.models.hf_seq2seq import IGNORE_INDEX
from trustml.plugin import MethodPlugin
from trustml.registry import plugin_class, register


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token negative log-likelihood ``[B, T]`` of ``labels`` under ``logits`` ``[B, T, V]``; 0 at ``-100``."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return nll.masked_fill(labels == IGNORE_INDEX, 0.0)


def mean_token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example mean token negative log-likelihood ``[B]``: ``(1/T_i) sum_t nll_{i,t}`` over non-padding tokens."""
    counts = (labels != IGNORE_INDEX).sum(1).clamp(min=1)
    return token_nll(logits, labels).sum(1) / counts


class TeacherForcedLogits(nn.Module):
    """``forward(x) -> [B, T, vocab]`` for ``x = {input_ids, attention_mask, labels}`` tensors: the one-argument
    view of an encoder-decoder that per-sample-gradient optimizers call (``model(batch["x"])``)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        labels = x["labels"]
        if labels.shape[0] == 0:  # an empty Poisson batch
            return labels.new_zeros(0, labels.shape[1], self.network.config.get_text_config().vocab_size).float()
        return self.network(
            input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=labels, return_dict=True
        ).logits


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
        self.uses_per_sample_gradients = bool(getattr(optimizer, "needs_per_sample_gradients", False))
        self.automatic_optimization = not self.uses_per_sample_gradients
        # kept out of the module tree (its parameters are the model's): the DP optimizer's view of the network
        self.__dict__["teacher_forced"] = TeacherForcedLogits(model.network)

    def sample_losses(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        """Per-example training loss ``[B]`` under a per-sample-gradient optimizer: :func:`mean_token_nll`."""
        return mean_token_nll(logits, batch["y"])

    def tensor_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` tokenized: ``{"x": {input_ids, attention_mask, labels}, "y": labels, "index"}`` (per-sample
        tensors, so the DP optimizer can split and vmap it)."""
        if len(batch["x"]) == 0:
            empty = torch.zeros(0, 1, dtype=torch.long, device=self.device)
            return {"x": {"input_ids": empty, "attention_mask": empty, "labels": empty}, "y": empty, "index": empty}
        inputs, labels = self._tokens(batch)
        return {"x": {**inputs, "labels": labels}, "y": labels, "index": batch["index"]}

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse models that are not encoder-decoders (decoder-only LMs read seq2seq prompts for generation,
        ``method=knob_generator``, but this objective needs an encoder)."""
        model_cls = plugin_class("model", cfg.model)
        method = f"method._target_={cfg.method._target_}"
        kinds = model_cls.accepted_input_kinds or frozenset()
        if SEQ2SEQ_INPUT_KIND not in kinds or LM_INPUT_KIND in kinds:
            raise ConfigError(
                f"{method} trains encoder-decoders, but model._target_={cfg.model._target_} is not one; "
                "use model=hf_seq2seq"
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not self.uses_per_sample_gradients:
            return self._step("train", batch)
        optimizer = self.optimizers()
        tensors = self.tensor_batch(batch)
        _, loss = optimizer.optimizer.private_gradients(self.teacher_forced, self.sample_losses, tensors)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        size = int(tensors["y"].shape[0])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=max(size, 1))
        return None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step("test", batch)

    @torch.no_grad()
    def evaluate_loader(self, loader: Any) -> dict[str, float]:
        """Token accuracy, mean token NLL and perplexity ``exp(NLL)`` over ``loader`` (a federation's per-round
        evaluation of the global model; the same quantities ``test_step`` logs)."""
        was_training = self.training
        self.eval()
        nll, correct, count = 0.0, 0, 0
        for batch in loader:
            inputs, labels = self._tokens(batch)
            logits = self.model(**inputs, labels=labels)
            nll += float(token_nll(logits, labels).sum())
            right, tokens = token_accuracy_counts(logits, labels)
            correct, count = correct + int(right), count + int(tokens)
        self.train(was_training)
        loss = nll / max(count, 1)
        return {"test_acc": correct / max(count, 1), "test_loss": loss, "test_perplexity": math.exp(min(loss, 50.0))}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
