"""``data=text_lm``: a corpus of plain texts for language modelling, split so that no group crosses splits.

Each sample is one text (a sentence, a conversation turn, a line); ``x`` is the list of texts (``input_kind``
``lm_text``: the causal LM model tokenizes them) and ``y`` is unused (zeros). Every text has a group, and a group's
texts all land in one split: the BOLD entity a Wikipedia sentence is about, the Topical-Chat conversation a turn
belongs to, a JSONL field, or the line itself. Readers (``data.format``; ``auto`` picks one per file):

- ``text``: one text per non-empty line, each its own group;
- ``jsonl``: one JSON object per line, the text in ``data.text_field``, the group in ``data.group_field`` (unset:
  each line its own group);
- ``bold_wiki``: BOLD's ``wikipedia/*_wiki.json`` (``{domain group: {entity: [sentence, ...]}}``), grouped by
  entity;
- ``topical_chat``: a Topical-Chat ``conversations_*.json``, one text per turn, grouped by conversation.

The split is by a hash of the group and ``data.split_seed`` (:func:`group_part`): a group goes to test when its
hash falls below ``test_fraction``, to val below ``test_fraction + val_fraction``, else to train. The rule needs
no other group, so any tool can tell which groups (e.g. BOLD entities, hence which BOLD prompts) a run held out:
:func:`held_out_groups`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.data.text_files import check_encoding, jsonl_rows, read_text
from trustml.errors import ConfigError, DataError
from trustml.registry import register

#: What a batch's ``x`` holds: a list of plain texts that the causal LM model tokenizes itself.
LM_INPUT_KIND = "lm_text"
FORMATS = ("auto", "text", "jsonl", "bold_wiki", "topical_chat")
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class GroupedText:
    """One text and the group (entity, conversation, ...) that decides its split."""

    text: str
    group: str


def group_part(group: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """``train``, ``val`` or ``test`` for ``group``: ``u = blake2b(seed:group)`` read as a number in [0, 1);
    test if ``u < test_fraction``, val if ``u < test_fraction + val_fraction``, else train."""
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def held_out_groups(groups: Iterable[str], val_fraction: float, test_fraction: float, seed: int, part: str) -> set[str]:
    """The groups among ``groups`` that :func:`group_part` puts in ``part``."""
    return {g for g in groups if group_part(g, val_fraction, test_fraction, seed) == part}


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "topical_chat" if path.name.startswith("conversations_") else "bold_wiki"
    return "text"


def read_bold_wiki(path: Path, encoding: str = "utf-8") -> list[GroupedText]:
    """Sentences of a BOLD ``*_wiki.json`` (``{group: {entity: [sentence, ...]}}``), grouped by entity."""
    try:
        raw = json.loads(read_text(path, encoding, "data.encoding"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise DataError(
            f"{path}: not a BOLD wiki file ({{group: {{entity: [sentence, ...]}}}}); set data.format for this file"
        )
    texts = []
    for entities in raw.values():
        for entity, sentences in entities.items():
            if not isinstance(sentences, list):
                raise DataError(f"{path}: entity {entity!r} holds {type(sentences).__name__}, not a list of sentences")
            texts += [GroupedText(s.strip(), str(entity)) for s in sentences if isinstance(s, str) and s.strip()]
    return texts


def read_topical_chat_turns(path: Path, encoding: str = "utf-8") -> list[GroupedText]:
    """Turns of a Topical-Chat ``conversations_*.json``, grouped by conversation id."""
    from trustml.data.topical_chat_files import read_conversations

    try:
        turns = read_conversations(path, encoding)
    except (AttributeError, KeyError, TypeError):
        raise DataError(
            f"{path}: not a Topical-Chat conversations file ({{id: {{content: [{{message, ...}}]}}}}); "
            "set data.format for this file"
        ) from None
    return [GroupedText(t.message.strip(), t.conversation_id) for t in turns if t.message.strip()]


def read_jsonl(path: Path, text_field: str, group_field: str | None, encoding: str = "utf-8") -> list[GroupedText]:
    """Texts of a JSONL file (``text_field``), grouped by ``group_field`` (unset: each line its own group)."""
    texts = []
    for line_no, row in jsonl_rows(path, encoding):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise DataError(f"{path}:{line_no}: no text field {text_field!r} (set data.text_field)")
        if group_field is not None and group_field not in row:
            raise DataError(f"{path}:{line_no}: no group field {group_field!r} (set data.group_field, or null)")
        group = str(row[group_field]) if group_field is not None else f"{path.name}:{line_no}"
        if row[text_field].strip():
            texts.append(GroupedText(row[text_field].strip(), group))
    return texts


def read_corpus(
    path: str | Path,
    fmt: str = "auto",
    text_field: str = "text",
    group_field: str | None = None,
    encoding: str = "utf-8",
) -> list[GroupedText]:
    """The texts of one corpus file in format ``fmt`` (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.paths: {path} is not a file; give text, JSONL, BOLD wiki or Topical-Chat files")
    kind = _format_of(path, fmt)
    if kind == "bold_wiki":
        return read_bold_wiki(path, encoding)
    if kind == "topical_chat":
        return read_topical_chat_turns(path, encoding)
    if kind == "jsonl":
        return read_jsonl(path, text_field, group_field, encoding)
    lines = read_text(path, encoding, "data.encoding").splitlines()
    return [GroupedText(line.strip(), f"{path.name}:{i}") for i, line in enumerate(lines, start=1) if line.strip()]


@dataclass
class TextLMConfig(DataOptions):
    """Options of ``data=text_lm`` (module doc). ``max_texts_per_path`` keeps a seeded random subset of each file's
    texts (whole groups are not guaranteed, the split by group is); ``max_<split>_texts`` cap the splits."""

    paths: list[str] = field(default_factory=list)
    format: str = "auto"
    text_field: str = "text"
    group_field: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_texts_per_path: int | None = None
    max_train_texts: int | None = None
    max_eval_texts: int | None = None
    min_chars: int = 1
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.paths:
            raise ConfigError(
                "data.paths is empty; give one or more corpus files (text, JSONL, BOLD wiki, Topical-Chat)"
            )
        if self.format not in FORMATS:
            raise ConfigError(f"data.format={self.format!r} is unknown; use one of {list(FORMATS)}")
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise ConfigError(
                f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} must be in (0, 1) "
                "with a sum below 1"
            )
        check_encoding(self.encoding, "data.encoding")


@register("data", "text_lm", dataclass=TextLMConfig)
class TextLMDataModule(TrustDataModule):
    """Texts for next-token training; train/val/test by group (:func:`group_part`). Sample ids are positions in
    the concatenated corpus (stable for a given config)."""

    input_kind: ClassVar[str] = LM_INPUT_KIND
    config: TextLMConfig

    def read_texts(self) -> list[GroupedText]:
        """Every kept text of ``data.paths`` in order."""
        c = self.config
        texts: list[GroupedText] = []
        for i, path in enumerate(c.paths):
            found = read_corpus(path, c.format, c.text_field, c.group_field, c.encoding)
            found = [t for t in found if len(t.text) >= c.min_chars]
            if c.max_texts_per_path is not None and len(found) > c.max_texts_per_path:
                keep = np.random.default_rng([c.split_seed, i]).choice(len(found), c.max_texts_per_path, replace=False)
                found = [found[j] for j in np.sort(keep)]
            texts += found
        if not texts:
            raise DataError(f"data.paths={list(c.paths)} hold no text")
        return texts

    def load_splits(self) -> dict[str, Split]:
        c = self.config
        texts = self.read_texts()
        parts = np.array([group_part(t.group, c.val_fraction, c.test_fraction, c.split_seed) for t in texts])
        splits = {}
        for part in PARTS:
            rows = np.flatnonzero(parts == part)
            limit = c.max_train_texts if part == "train" else c.max_eval_texts
            if limit is not None and len(rows) > limit:
                rows = np.sort(np.random.default_rng([c.split_seed, PARTS.index(part)]).choice(rows, limit, False))
            if len(rows) == 0:
                n_groups = len({t.group for t in texts})
                raise DataError(
                    f"data=text_lm: no group of the {n_groups} in data.paths fell into the {part} split; use more "
                    "groups or a larger data.val_fraction/test_fraction"
                )
            splits[part] = self._split([texts[i] for i in rows], rows)
        self.label_names = []
        return splits

    @staticmethod
    def _split(texts: Sequence[GroupedText], rows: np.ndarray) -> Split:
        return Split(
            inputs=[t.text for t in texts],
            labels=torch.zeros(len(texts), dtype=torch.long),  # language modelling has no class labels
            index=torch.as_tensor(rows, dtype=torch.long),
            groups={"group": np.array([t.group for t in texts], dtype=object)},
        )
