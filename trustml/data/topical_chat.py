"""Topical-Chat turn sentiment: 8 classes, split by conversation (never by turn)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustml.data.base import DataOptions, Split, TrustDataModule, grouped_split
from trustml.data.text_files import check_encoding, read_text
from trustml.errors import DataError
from trustml.registry import register

SENTIMENTS = (
    "Curious to dive deeper",
    "Neutral",
    "Surprised",
    "Happy",
    "Sad",
    "Disgusted",
    "Angry",
    "Fearful",
)


@dataclass
class Turn:
    """One conversation turn with its sentiment label and where it comes from."""

    message: str
    sentiment: str
    conversation_id: str
    agent: str


def read_conversations(path: str | Path, encoding: str = "utf-8", encoding_option: str = "data.encoding") -> list[Turn]:
    """All turns of a Topical-Chat ``conversations_*.json`` file, in file order.

    The file is decoded by ``encoding`` (see :mod:`trustml.data.text_files`); bytes that do not decode are a
    :class:`DataError` naming the line and ``encoding_option``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Topical-Chat file not found: {path} (set data.data_dir to the topical_chat folder)")
    try:
        conversations = json.loads(read_text(path, encoding, encoding_option))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    turns = []
    for conv_id, conv in conversations.items():
        for turn_no, turn in enumerate(conv.get("content", [])):
            sentiment = turn.get("sentiment")
            if sentiment not in SENTIMENTS:
                raise DataError(
                    f"{path}: conversation {conv_id} turn {turn_no} has sentiment {sentiment!r}; expected one of "
                    f"{list(SENTIMENTS)}"
                )
            turns.append(Turn(turn["message"], sentiment, str(conv_id), str(turn["agent"])))
    return turns


@dataclass
class TopicalChatSentimentConfig(DataOptions):
    """Options of ``data=topical_chat_sentiment``.

    ``encoding``: how the JSON files are decoded (``utf-8``, another Python codec name, or ``auto``: UTF-8, else
    Latin-1 with a warning); a file that does not decode is refused with its line and this option.
    """

    data_dir: str = "${paths.shared_data_dir}/topical_chat"
    train_files: list[str] = field(
        default_factory=lambda: ["conversations_valid_freq.json", "conversations_valid_rare.json"]
    )
    test_files: list[str] = field(default_factory=lambda: ["conversations_test_freq.json"])
    val_fraction: float = 0.1
    max_conversations: int | None = None
    encoding: str = "utf-8"


@register("data", "topical_chat_sentiment", dataclass=TopicalChatSentimentConfig)
class TopicalChatSentimentDataModule(TrustDataModule):
    """Turn-level sentiment of Topical-Chat; validation conversations held out from the training files.

    Group columns ``conversation`` and ``device`` (conversation + agent) go with every split, for natural
    federated partitions.
    """

    input_kind = "text"

    def __init__(
        self,
        data_dir: str,
        train_files: list[str],
        test_files: list[str],
        val_fraction: float = 0.1,
        max_conversations: int | None = None,
        encoding: str = "utf-8",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.data_dir = Path(data_dir)
        self.encoding = check_encoding(encoding, "data.encoding")
        self.train_files, self.test_files = list(train_files), list(test_files)
        self.val_fraction, self.max_conversations = val_fraction, max_conversations

    def _turns(self, files: list[str]) -> list[Turn]:
        turns = [t for name in files for t in read_conversations(self.data_dir / name, self.encoding)]
        if self.max_conversations is not None:
            keep = set(list(dict.fromkeys(t.conversation_id for t in turns))[: self.max_conversations])
            turns = [t for t in turns if t.conversation_id in keep]
        return turns

    def load_splits(self) -> dict[str, Split]:
        if not self.data_dir.is_dir():
            raise DataError(f"data.data_dir={self.data_dir} is not a folder; point it at Topical-Chat's JSON files")
        self.label_names = list(SENTIMENTS)
        train_pool = self._turns(self.train_files)
        test_turns = self._turns(self.test_files)
        conv = np.array([t.conversation_id for t in train_pool], dtype=object)
        train_rows, val_rows = grouped_split(conv, (1.0 - self.val_fraction, self.val_fraction), self.split_seed)
        by_split = {
            "train": [train_pool[i] for i in train_rows],
            "val": [train_pool[i] for i in val_rows],
            "test": test_turns,
        }
        label_id = {s: i for i, s in enumerate(SENTIMENTS)}
        splits, offset = {}, 0
        for name, turns in by_split.items():
            splits[name] = Split(
                inputs=[t.message for t in turns],
                labels=np.array([label_id[t.sentiment] for t in turns]),
                index=np.arange(offset, offset + len(turns)),
                groups={
                    "conversation": np.array([t.conversation_id for t in turns], dtype=object),
                    "device": np.array([f"{t.conversation_id}/{t.agent}" for t in turns], dtype=object),
                },
            )
            offset += len(turns)
        return splits
