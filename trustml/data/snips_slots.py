"""``data=snips_slots``: slot filling on the SNIPS NLU benchmark (2017-06 custom intents) as BIO word tags.

The folder (``data.path``, default ``../shared/data/snips``) holds per intent ``train_<Intent>.json`` (300
utterances), ``train_<Intent>_full.json`` (about 2,000) and ``validate_<Intent>.json`` (100). A file is
``{"<Intent>": [{"data": [{"text": "play "}, {"text": "pop", "entity": "genre"}, ...]}, ...]}``: an utterance is
its chunks' texts concatenated, a chunk with an ``entity`` is a slot value.

Each utterance becomes words and one BIO tag per word: a chunk's text is cut into words (runs of letters and
digits; every other visible character, e.g. punctuation, is a word by itself, as BERT's basic tokenizer cuts text);
the first word of a slot chunk is tagged ``B-<slot>``, its other words ``I-<slot>``, words outside slots ``O``.
A sample's input is its words joined by single spaces (so a WordPiece tokenizer finds exactly these words again,
see :mod:`trustml.methods.tagging`), its label a row of tag ids ``[W]`` padded with ``-100`` to the split's longest
utterance, and its group column ``intent`` the utterance's intent (``federation.partition.kind=natural
group_column=intent`` makes one client per intent). ``label_names`` are the tags: ``O``, then ``B-``/``I-`` of
every slot in any file read, sorted.

Splits: ``test`` is the ``validate_<Intent>.json`` files (held-out utterances); ``val`` is ``val_fraction`` of the
training file's utterances (seeded by ``data.split_seed``), ``train`` the rest. ``full=true`` reads the
``_full`` training files. The SNIPS files mix UTF-8, CESU-8 and Latin-1; ``encoding=auto`` (default) reads all of
them (:mod:`trustml.data.text_files`).

(``trustml.synth.formats.read_snips_json`` parses the same files into character spans for ``trustml-synth``; the
data layer cannot import the synth layer, and tagging needs words, so the few lines of chunk parsing live here.)
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.data.text_files import check_encoding, read_text
from trustml.errors import ConfigError, DataError
from trustml.registry import register

INTENTS = ("PlayMusic", "GetWeather", "BookRestaurant")
#: label of the padding positions of a tag row (ignored by the loss and the metrics)
PAD_TAG = -100
OUTSIDE = "O"

# CJK ideographs are words by themselves (BERT's basic tokenizer splits them apart too)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|[^\w\s]|_")


def words_of(text: str) -> list[str]:
    """The words of ``text``: letter/digit runs, and every other visible character alone (see module doc).

    Characters a BERT tokenizer drops before cutting text (control and format characters, the replacement character,
    and combining marks: accents are stripped, ``café`` becomes ``cafe``) are dropped first, so that no word vanishes
    inside the tokenizer.
    """
    kept = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) not in ("Cc", "Cf", "Mn")
    )
    kept = unicodedata.normalize("NFC", kept).replace("\ufffd", " ")
    return _WORD.findall(kept)


@dataclass(frozen=True)
class TaggedUtterance:
    """One SNIPS utterance as words, their BIO tags and its intent."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str


def tag_chunks(chunks: list[Any], where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Words and BIO tags of one utterance's chunks (``where`` names it in errors)."""
    words: list[str] = []
    tags: list[str] = []
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise DataError(f"{where}: a chunk must be an object with a 'text' string, got {chunk!r:.80}")
        piece = words_of(chunk["text"])
        slot = chunk.get("entity")
        if slot:
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(piece) - 1) if piece else []
        else:
            tags += [OUTSIDE] * len(piece)
        words += piece
    return tuple(words), tuple(tags)


def read_snips_file(path: Path, encoding: str) -> list[TaggedUtterance]:
    """The tagged utterances of one SNIPS JSON file; a malformed file is a :class:`DataError` naming it."""
    if not path.is_file():
        raise DataError(f"SNIPS file not found: {path}; set data.path to the snips folder (e.g. ../shared/data/snips)")
    try:
        obj = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f'{path}: expected the SNIPS format {{"Intent": [{{"data": [...]}}]}}')
    out = []
    for intent, items in obj.items():
        for k, item in enumerate(items if isinstance(items, list) else []):
            chunks = item.get("data") if isinstance(item, dict) else None
            if not isinstance(chunks, list):
                raise DataError(f"{path}: utterance {k} of intent '{intent}' has no 'data' list of chunks")
            words, tags = tag_chunks(chunks, f"{path}: utterance {k} of intent '{intent}'")
            if words:
                out.append(TaggedUtterance(words, tags, str(intent)))
    if not out:
        raise DataError(f"{path}: no utterances")
    return out


def tag_names(utterances: list[TaggedUtterance]) -> list[str]:
    """``O``, then ``B-<slot>``, ``I-<slot>`` for every slot of ``utterances`` in sorted order."""
    slots = sorted({tag[2:] for u in utterances for tag in u.tags if tag != OUTSIDE})
    return [OUTSIDE] + [f"{prefix}-{slot}" for slot in slots for prefix in ("B", "I")]


@dataclass
class SnipsSlotsConfig(DataOptions):
    """Options of ``data=snips_slots``: the folder, the intents, the training files, the validation share."""

    path: str = "${paths.shared_data_dir}/snips"
    intents: list[str] = field(default_factory=lambda: list(INTENTS))
    full: bool = False
    val_fraction: float = 0.1
    encoding: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.intents:
            raise ConfigError(f"data.intents must name at least one SNIPS intent, e.g. {list(INTENTS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check_encoding(self.encoding)


@register("data", "snips_slots", dataclass=SnipsSlotsConfig)
class SnipsSlotsDataModule(TrustDataModule):
    """SNIPS slot filling: texts of words, BIO tag rows, the intent as group column (see module doc)."""

    input_kind = "text"
    #: labels are rows of per-word tags ``[N, W]`` (padding ``-100``), not one class per sample
    token_level_labels: ClassVar[bool] = True
    config: SnipsSlotsConfig

    def load_splits(self) -> dict[str, Split]:
        root = Path(self.config.path)
        if not root.is_dir():
            raise DataError(
                f"data.path={root} is not a folder; point it at the SNIPS folder with train_<Intent>.json and "
                f"validate_<Intent>.json files, e.g. ../shared/data/snips"
            )
        suffix = "_full" if self.config.full else ""
        train: list[TaggedUtterance] = []
        test: list[TaggedUtterance] = []
        for intent in self.config.intents:
            train += read_snips_file(root / f"train_{intent}{suffix}.json", self.config.encoding)
            test += read_snips_file(root / f"validate_{intent}.json", self.config.encoding)
        self.label_names = tag_names(train + test)
        ids = {name: k for k, name in enumerate(self.label_names)}
        rng = np.random.default_rng(self.config.split_seed)
        order = rng.permutation(len(train))
        num_val = int(round(self.config.val_fraction * len(train)))
        if len(train) - num_val < 1 or (self.config.val_fraction > 0 and num_val < 1):
            raise DataError(
                f"{len(train)} training utterances cannot give both a train and a val split at data.val_fraction="
                f"{self.config.val_fraction}; read more intents or data.full=true"
            )
        # without a validation share, validate on the test files (nothing trains on either)
        val_rows = np.sort(order[:num_val]) if num_val else None
        parts = {
            "train": [train[i] for i in np.sort(order[num_val:])],
            "val": [train[i] for i in val_rows] if val_rows is not None else test,
            "test": test,
        }
        splits: dict[str, Split] = {}
        offset = 0
        for name, rows in parts.items():
            width = max(len(u.words) for u in rows)
            labels = np.full((len(rows), width), PAD_TAG, dtype=np.int64)
            for i, utterance in enumerate(rows):
                labels[i, : len(utterance.tags)] = [ids[tag] for tag in utterance.tags]
            splits[name] = Split(
                inputs=[" ".join(u.words) for u in rows],
                labels=labels,
                index=np.arange(offset, offset + len(rows)),
                groups={"intent": np.array([u.intent for u in rows])},
            )
            offset += len(rows)
        return splits
