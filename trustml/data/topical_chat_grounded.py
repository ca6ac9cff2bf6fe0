"""``data=topical_chat_grounded``: Topical-Chat turns as source -> target pairs for ``method=seq2seq``.

Each sample is a :class:`Seq2SeqExample`: the encoder input as named segments (``knowledge``, ``history``) and the
target text. ``task=response`` trains the response model (knowledge + history -> the turn's response);
``task=autoencoder`` trains the autoencoder of decoder mixing (knob B), which reconstructs its input
(``knowledge: ... history: ...`` written out, truncated like any target). The model plugin tokenizes (it owns the
tokenizer), so ``x`` stays a list of examples and ``input_kind`` is ``"seq2seq"``: classification plugins refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from trustml.data.base import DataOptions, Split, TrustDataModule, grouped_split
from trustml.data.text_files import check_encoding
from trustml.data.topical_chat_files import GroundedTurn, read_grounded_turns, read_wiki_sections
from trustml.errors import ConfigError
from trustml.registry import register

TASKS = ("response", "autoencoder")
SEQ2SEQ_INPUT_KIND = "seq2seq"


@dataclass
class Seq2SeqExample:
    """One source -> target pair: the source as named segments, the target text, and where it came from."""

    segments: dict[str, str]
    target: str
    conversation_id: str = ""
    turn_index: int = -1


def source_text(segments: dict[str, str]) -> str:
    """The segments written out as ``name: text`` in order (the autoencoder's target)."""
    return " ".join(f"{name}: {text}" for name, text in segments.items() if text)


def grounded_examples(turns: Sequence[GroundedTurn], task: str, turn_separator: str = " ") -> list[Seq2SeqExample]:
    """Turns as pairs: ``response`` -> the turn's message, ``autoencoder`` -> the source itself."""
    if task not in TASKS:
        raise ConfigError(f"data.task={task!r} is unknown; use one of {list(TASKS)}")
    examples = []
    for turn in turns:
        segments = turn.segments(turn_separator)
        target = turn.response if task == "response" else source_text(segments)
        examples.append(Seq2SeqExample(segments, target, turn.conversation_id, turn.turn_index))
    return examples


@dataclass
class TopicalChatGroundedConfig(DataOptions):
    """Options of ``data=topical_chat_grounded`` (defaults: train on valid_freq + valid_rare, test on test_freq).

    ``encoding``: how the JSON files are decoded (``utf-8``, another Python codec name, or ``auto``: UTF-8, else
    Latin-1 with a warning); a file that does not decode is refused with its line and this option.
    """

    data_dir: str = "${paths.shared_data_dir}/topical_chat"
    task: str = "response"
    train_splits: list[str] = field(default_factory=lambda: ["valid_freq", "valid_rare"])
    test_split: str = "test_freq"
    val_fraction: float = 0.05
    history_turns: int = 3
    turn_separator: str = " "
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ConfigError(f"data.task={self.task!r} is unknown; use one of {list(TASKS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must lie in (0, 1)")
        if not self.train_splits:
            raise ConfigError("data.train_splits is empty; name at least one Topical-Chat split (e.g. valid_freq)")
        check_encoding(self.encoding, "data.encoding")


@register("data", "topical_chat_grounded", dataclass=TopicalChatGroundedConfig)
class TopicalChatGrounded(TrustDataModule):
    """Topical-Chat knowledge-grounded turns as seq2seq pairs; validation = whole held-out training conversations.

    Sample ids: position in the training pool (``train_splits`` concatenated) for train/val, then the test turns.
    """

    input_kind: ClassVar[str] = SEQ2SEQ_INPUT_KIND
    config: TopicalChatGroundedConfig

    def _examples(self, split: str, wiki: dict[int, str]) -> list[Seq2SeqExample]:
        c = self.config
        turns = read_grounded_turns(c.data_dir, split, history_turns=c.history_turns, wiki=wiki, encoding=c.encoding)
        return grounded_examples(turns, c.task, c.turn_separator)

    @staticmethod
    def _split(examples: list[Seq2SeqExample], ids: np.ndarray, limit: int | None) -> Split:
        examples, ids = (examples[:limit], ids[:limit]) if limit is not None else (examples, ids)
        return Split(
            inputs=examples,
            labels=torch.zeros(len(examples), dtype=torch.long),  # generation has no class labels
            index=torch.as_tensor(ids, dtype=torch.long),
            groups={"conversation": np.array([e.conversation_id for e in examples], dtype=object)},
        )

    def load_splits(self) -> dict[str, Split]:
        c = self.config
        wiki = read_wiki_sections(f"{c.data_dir}/wiki.json", c.encoding)
        pool = [e for split in c.train_splits for e in self._examples(split, wiki)]
        conversations = np.array([e.conversation_id for e in pool], dtype=object)
        train_rows, val_rows = grouped_split(conversations, [1.0 - c.val_fraction, c.val_fraction], c.split_seed)
        train = self._split([pool[i] for i in train_rows], train_rows, c.max_train_examples)
        val = self._split([pool[i] for i in val_rows], val_rows, c.max_eval_examples)
        test_examples = self._examples(c.test_split, wiki)
        test = self._split(test_examples, len(pool) + np.arange(len(test_examples)), c.max_eval_examples)
        return {"train": train, "val": val, "test": test}
