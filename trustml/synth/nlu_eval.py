"""Evaluation models for NLU data: a joint intent classifier and slot tagger on a Hugging Face encoder.

The encoder (MiniLM by default) reads the utterance's words; each word is represented by the state of its
first sub-word. The intent head classifies the mean of the sub-word states; the slot tagger (a
bidirectional GRU over the word states and a linear layer) tags each word with a BIO label (token
classification). Training minimizes ``CE(intent) + CE(word tags)``. With ``freeze_encoder`` (the
default, cheap on a CPU) the encoder runs once per distinct utterance and only the heads train; with
``trainable_last_layers`` k its last k blocks train too; without ``freeze_encoder`` all of it is fine-tuned.
Scores: intent accuracy and the span-level slot F1 of CoNLL evaluation (:mod:`seqeval`): a predicted slot
counts when its type and its word span both match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from seqeval.metrics import f1_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from trustml.errors import ConfigError
from trustml.models.hf_encoder import OFFLINE_MINILM, encoder_layers, mean_pool, resolve_pretrained
from trustml.synth.annotation import Utterance

IGNORE = -100


@dataclass(frozen=True)
class Labels:
    """The intent and BIO tag vocabularies."""

    intents: tuple[str, ...]
    tags: tuple[str, ...]

    @classmethod
    def of(cls, utterances: Sequence[Utterance]) -> Labels:
        """Sorted intents and tags (``O`` first) of ``utterances``."""
        intents = sorted({u.intent for u in utterances})
        slots = sorted({s.slot for u in utterances for s in u.spans})
        return cls(tuple(intents), ("O", *(f"{p}-{s}" for s in slots for p in ("B", "I"))))

    def targets(self, utterances: Sequence[Utterance], num_words: int) -> tuple[Tensor, Tensor]:
        """Intent ids ``[N]`` and word tag ids ``[N, num_words]`` (``-100`` for padding and unknown labels)."""
        intent_id = {name: i for i, name in enumerate(self.intents)}
        tag_id = {t: i for i, t in enumerate(self.tags)}
        tags = torch.full((len(utterances), num_words), IGNORE, dtype=torch.long)
        for row, u in enumerate(utterances):
            ids = [tag_id.get(t, IGNORE) for t in u.bio_tags()[:num_words]]
            tags[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        intents = torch.tensor([intent_id.get(u.intent, IGNORE) for u in utterances], dtype=torch.long)
        return intents, tags


def tokenize(tokenizer: PreTrainedTokenizerBase, utterances: Sequence[Utterance], max_length: int) -> dict[str, Tensor]:
    """Sub-word ids of the utterances' words, with ``word_index`` = the word a position starts (else -1)."""
    words = [[t for t, _, _ in u.tokens()] for u in utterances]
    enc = tokenizer(
        words, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    word_index = torch.full(enc["input_ids"].shape, -1, dtype=torch.long)
    for row in range(len(utterances)):
        previous = None
        for pos, w in enumerate(enc.word_ids(row)):
            if w is not None and w != previous:
                word_index[row, pos] = w
            previous = w
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "word_index": word_index}


def word_states(hidden: Tensor, word_index: Tensor) -> tuple[Tensor, Tensor]:
    """First-sub-word states per word ``[B, W, H]`` and the word mask ``[B, W]`` (W = most words in the batch)."""
    starts = word_index >= 0
    num_words = int(word_index.max().item()) + 1 if starts.any() else 1
    rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1).expand_as(word_index)
    out = hidden.new_zeros(hidden.shape[0], num_words, hidden.shape[-1])
    out[rows[starts], word_index[starts]] = hidden[starts]
    mask = torch.zeros(hidden.shape[0], num_words, dtype=torch.bool, device=hidden.device)
    mask[rows[starts], word_index[starts]] = True
    return out, mask


class IntentSlotHeads(nn.Module):
    """Intent logits from the pooled state; BIO tag logits from a bidirectional GRU over word states."""

    def __init__(
        self, hidden_size: int, num_intents: int, num_tags: int, tagger_size: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.intent = nn.Linear(hidden_size, num_intents)
        self.tagger = nn.GRU(hidden_size, tagger_size, batch_first=True, bidirectional=True)
        self.tags = nn.Linear(2 * tagger_size, num_tags)

    def forward(self, words: Tensor, word_mask: Tensor, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``(intent logits [B, I], tag logits [B, W, K])``."""
        lengths = word_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(words), lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.tagger(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=words.shape[1])
        return self.intent(self.dropout(pooled)), self.tags(self.dropout(states))


class JointIntentSlotModel(nn.Module):
    """Encoder + :class:`IntentSlotHeads`: sub-word ids in, intent and word-tag logits out."""

    def __init__(self, encoder: nn.Module, heads: IntentSlotHeads) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads

    def features(self, input_ids: Tensor, attention_mask: Tensor, word_index: Tensor) -> dict[str, Tensor]:
        """The heads' inputs: ``words``, ``word_mask`` and mean-pooled ``pooled`` states."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words, mask = word_states(hidden, word_index)
        return {"words": words, "word_mask": mask, "pooled": mean_pool(hidden, attention_mask)}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits for a batch of sub-word ids (or of precomputed ``words``/``word_mask``/``pooled``)."""
        feats = (
            batch
            if "words" in batch
            else self.features(batch["input_ids"], batch["attention_mask"], batch["word_index"])
        )
        return self.heads(feats["words"], feats["word_mask"], feats["pooled"])


def joint_loss(intent_logits: Tensor, tag_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """``CE(intent) + CE(word tags)`` (targets ``-100`` ignored)."""
    tags = batch["tags"][:, : tag_logits.shape[1]]
    intent = F.cross_entropy(intent_logits, batch["intent"], ignore_index=IGNORE)
    return intent + F.cross_entropy(tag_logits.flatten(0, 1), tags.flatten(), ignore_index=IGNORE)


@dataclass(frozen=True)
class NluTrainingConfig:
    """Options: encoder (``pretrained`` name/path, or ``random_init`` transformers config fields with
    ``tokenizer``), ``freeze_encoder`` (with ``trainable_last_layers`` k > 0: all but the encoder's last k
    transformer blocks frozen), optimisation (``steps`` of ``batch_size``, ``lr``, ``encoder_lr`` for the encoder's
    trained weights, ``None``: ``lr``; warm-up fraction), ``seed`` and the Lightning ``accelerator``."""

    pretrained: str = OFFLINE_MINILM
    tokenizer: str | None = None
    random_init: dict[str, Any] | None = None
    freeze_encoder: bool = True
    trainable_last_layers: int = 0
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    encoder_lr: float | None = None
    warmup: float = 0.1
    max_length: int = 64
    tagger_size: int = 128
    dropout: float = 0.1
    seed: int = 0
    accelerator: str = "cpu"

    def __post_init__(self) -> None:
        if self.encoder_lr is not None and self.encoder_lr <= 0:
            raise ConfigError(f"encoder_lr must be > 0 (or None: lr), got {self.encoder_lr}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError(f"NLU training needs steps >= 1, batch_size >= 1, lr > 0, 0 <= warmup < 1 ({self})")
        if self.trainable_last_layers < 0:
            raise ConfigError(f"trainable_last_layers must be >= 0, got {self.trainable_last_layers}")
        if self.trainable_last_layers and not self.freeze_encoder:
            raise ConfigError(
                f"trainable_last_layers={self.trainable_last_layers} trains the last layers of a frozen encoder, but "
                "freeze_encoder=False trains all of it: set freeze_encoder=True or trainable_last_layers=0"
            )

    @property
    def features_fixed(self) -> bool:
        """Whether no encoder weight trains, so the encoder's features can be computed once and cached."""
        return self.freeze_encoder and self.trainable_last_layers == 0


def load_encoder(config: NluTrainingConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The encoder (pretrained, or randomly initialised from ``random_init``) and its tokenizer."""
    if config.random_init is not None:
        fields = dict(config.random_init)
        encoder = AutoModel.from_config(AutoConfig.for_model(fields.pop("model_type", "bert"), **fields))
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(config.tokenizer or OFFLINE_MINILM))
        return encoder, tokenizer
    encoder = AutoModel.from_pretrained(resolve_pretrained(config.pretrained))
    return encoder, AutoTokenizer.from_pretrained(resolve_pretrained(config.tokenizer or config.pretrained))


class FeatureCache:
    """Frozen-encoder features per distinct word sequence, computed once (no gradients)."""

    def __init__(
        self, model: JointIntentSlotModel, tokenizer: PreTrainedTokenizerBase, max_length: int, batch_size: int = 64
    ) -> None:
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size
        self.store: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def batch(self, utterances: Sequence[Utterance]) -> dict[str, Tensor]:
        """Padded ``words [N, W, H]``, ``word_mask`` and ``pooled`` for ``utterances``."""
        keys = [tuple(t for t, _, _ in u.tokens()) for u in utterances]
        missing = list(dict.fromkeys(k for k in keys if k not in self.store))
        self.model.encoder.eval()
        for lo in range(0, len(missing), self.batch_size):
            chunk = missing[lo : lo + self.batch_size]
            enc = tokenize(self.tokenizer, [Utterance(" ".join(k), "") for k in chunk], self.max_length)
            feats = self.model.features(enc["input_ids"], enc["attention_mask"], enc["word_index"])
            for i, k in enumerate(chunk):
                n = int(feats["word_mask"][i].sum())
                self.store[k] = (feats["words"][i, :n].clone(), feats["pooled"][i].clone())
        words = nn.utils.rnn.pad_sequence([self.store[k][0] for k in keys], batch_first=True)
        lengths = torch.tensor([len(self.store[k][0]) for k in keys])
        mask = torch.arange(words.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return {"words": words, "word_mask": mask, "pooled": torch.stack([self.store[k][1] for k in keys])}


class JointNluModule(pl.LightningModule):
    """Trains a :class:`JointIntentSlotModel` on :func:`joint_loss` with AdamW and a linear warm-up/decay
    schedule over ``steps``; only the weights that require gradients (the heads, and the encoder's trainable
    blocks, when the encoder is frozen), the encoder's at ``encoder_lr`` (``None``: ``lr``)."""

    def __init__(
        self, model: JointIntentSlotModel, lr: float, steps: int, warmup: float, encoder_lr: float | None = None
    ) -> None:
        super().__init__()
        self.model, self.lr, self.steps, self.warmup = model, lr, steps, warmup
        self.encoder_lr = lr if encoder_lr is None else encoder_lr

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        intent_logits, tag_logits = self.model(batch)
        loss = joint_loss(intent_logits, tag_logits, batch)
        self.log("train_loss", loss, batch_size=batch["intent"].shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
        heads = [p for p in self.model.heads.parameters() if p.requires_grad]
        groups = [{"params": heads}] + ([{"params": encoder, "lr": self.encoder_lr}] if encoder else [])
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(self.warmup * self.steps), self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class _Rows(Dataset):
    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["intent"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


@dataclass
class NluModel:
    """A trained joint model with its tokenizer, labels and (frozen encoder) feature cache."""

    model: JointIntentSlotModel
    tokenizer: PreTrainedTokenizerBase
    labels: Labels
    config: NluTrainingConfig
    cache: FeatureCache | None = None

    def inputs(self, utterances: Sequence[Utterance]) -> dict[str, Tensor]:
        """The model's input tensors: cached features (frozen encoder) or sub-word ids."""
        if self.cache is not None:
            return self.cache.batch(utterances)
        return tokenize(self.tokenizer, utterances, self.config.max_length)


def train(
    train_set: Sequence[Utterance],
    config: NluTrainingConfig,
    labels: Labels | None = None,
    cache: FeatureCache | None = None,
) -> NluModel:
    """Train the joint model on ``train_set`` for ``config.steps`` steps (reshuffled each epoch).

    A ``cache`` from an earlier frozen-encoder run is reused (its encoder must match ``config``).
    """
    if not train_set:
        raise ConfigError("the NLU training set is empty")
    pl.seed_everything(config.seed, workers=False, verbose=False)
    labels = labels or Labels.of(train_set)
    if cache is not None and config.features_fixed:
        encoder, tokenizer = cache.model.encoder, cache.tokenizer
    else:
        encoder, tokenizer = load_encoder(config)
    heads = IntentSlotHeads(
        encoder.config.hidden_size, len(labels.intents), len(labels.tags), config.tagger_size, config.dropout
    )
    model = JointIntentSlotModel(encoder, heads)
    if config.freeze_encoder:
        encoder.requires_grad_(False)
        if config.trainable_last_layers:
            layers = encoder_layers(encoder, "trainable_last_layers")
            if config.trainable_last_layers > len(layers):
                raise ConfigError(
                    f"trainable_last_layers={config.trainable_last_layers} but the encoder has {len(layers)} layers"
                )
            for layer in layers[-config.trainable_last_layers :]:
                layer.requires_grad_(True)
    if config.features_fixed:
        cache = cache or FeatureCache(model, tokenizer, config.max_length)
        cache.model = model
    nlu = NluModel(model, tokenizer, labels, config, cache if config.features_fixed else None)
    tensors = nlu.inputs(train_set)
    intents, tags = labels.targets(train_set, max(len(u.tokens()) for u in train_set))
    tensors = {**tensors, "intent": intents, "tags": tags}
    loader = DataLoader(
        _Rows(tensors), batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(config.seed)
    )
    model.train()
    if config.features_fixed:
        encoder.eval()
    module = JointNluModule(model, config.lr, config.steps, config.warmup, config.encoder_lr)
    trainer = pl.Trainer(
        max_steps=config.steps,
        accelerator=config.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    model.cpu().eval()
    return nlu


@torch.no_grad()
def predict(nlu: NluModel, utterances: Sequence[Utterance], batch_size: int = 256) -> tuple[list[str], list[list[str]]]:
    """Predicted intents and word-level BIO tags (words past ``max_length`` sub-words are tagged ``O``)."""
    nlu.model.eval()
    intents: list[str] = []
    tags: list[list[str]] = []
    for lo in range(0, len(utterances), batch_size):
        chunk = utterances[lo : lo + batch_size]
        intent_logits, tag_logits = nlu.model(nlu.inputs(chunk))
        intents += [nlu.labels.intents[i] for i in intent_logits.argmax(-1).tolist()]
        best = tag_logits.argmax(-1).tolist()
        for row, u in enumerate(chunk):
            n = len(u.tokens())
            predicted = [nlu.labels.tags[i] for i in best[row][:n]]
            tags.append(predicted + ["O"] * (n - len(predicted)))
    return intents, tags


def evaluate(nlu: NluModel, test_set: Sequence[Utterance]) -> dict[str, float]:
    """``intent_accuracy`` and span-level ``slot_f1`` (CoNLL, via :mod:`seqeval`) on ``test_set``."""
    intents, tags = predict(nlu, test_set)
    accuracy = sum(p == u.intent for p, u in zip(intents, test_set, strict=True)) / len(test_set)
    return {"intent_accuracy": accuracy, "slot_f1": float(f1_score([u.bio_tags() for u in test_set], tags))}
