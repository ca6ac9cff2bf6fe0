"""Topical-Chat turn sentiment: 8 classes, split by conversation (never by turn)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trustml.data.base import DataOptions, Split, TrustDataModule, grouped_split
from trustml.data.text_files import check_encoding
from trustml.data.topical_chat_files import SENTIMENTS, Turn, read_conversations
from trustml.errors import DataError
from trustml.registry import register


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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_encoding(self.encoding, "data.encoding")


@register("data", "topical_chat_sentiment", dataclass=TopicalChatSentimentConfig)
class TopicalChatSentimentDataModule(TrustDataModule):
    """Turn-level sentiment of Topical-Chat; validation conversations held out from the training files.

    Group columns ``conversation`` and ``device`` (conversation + agent) go with every split, for natural
    federated partitions.
    """

    input_kind = "text"
    config: TopicalChatSentimentConfig

    def _turns(self, files: list[str]) -> list[Turn]:
        data_dir, limit = Path(self.config.data_dir), self.config.max_conversations
        turns = [t for name in files for t in read_conversations(data_dir / name, self.config.encoding)]
        if limit is not None:
            keep = set(list(dict.fromkeys(t.conversation_id for t in turns))[:limit])
            turns = [t for t in turns if t.conversation_id in keep]
        return turns

    def load_splits(self) -> dict[str, Split]:
        c = self.config
        if not Path(c.data_dir).is_dir():
            raise DataError(f"data.data_dir={c.data_dir} is not a folder; point it at Topical-Chat's JSON files")
        self.label_names = list(SENTIMENTS)
        train_pool = self._turns(c.train_files)
        test_turns = self._turns(c.test_files)
        conv = np.array([t.conversation_id for t in train_pool], dtype=object)
        train_rows, val_rows = grouped_split(conv, (1.0 - c.val_fraction, c.val_fraction), c.split_seed)
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
