"""Data plugins: splits, sample ids, file parsing and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, requires_shared_data
from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.data.text_classification import TextClassificationConfig, TextClassificationDataModule, read_records
from trustml.data.topical_chat import TopicalChatSentimentConfig, TopicalChatSentimentDataModule
from trustml.data.topical_chat_files import SENTIMENTS
from trustml.errors import DataError


def test_digits_splits_are_disjoint_standardized_and_stable() -> None:
    a, b = DigitsDataModule(DigitsConfig()), DigitsDataModule(DigitsConfig())
    a.setup()
    b.setup()
    ids = [set(a.splits[s].index.tolist()) for s in ("train", "val", "test")]
    assert sum(len(i) for i in ids) == 1797 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert a.num_classes == 10 and a.input_dim == 64
    assert a.splits["test"].index.tolist() == b.splits["test"].index.tolist()
    train = a.splits["train"].inputs
    assert abs(float(train.mean())) < 0.05
    assert float(a.splits["test"].inputs.abs().max()) < 100  # constant pixels are not blown up
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"x", "y", "index"} and batch["x"].shape == (64, 64)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_text_classification_jsonl_with_custom_columns(tmp_path: Path) -> None:
    rows = [{"utt": f"sample {i}", "intent": "ab"[i % 2], "spk": f"s{i % 5}"} for i in range(40)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    dm = TextClassificationDataModule(
        TextClassificationConfig(path=str(path), text_field="utt", label_field="intent", group_field="spk")
    )
    dm.setup()
    assert dm.label_names == ["a", "b"] and dm.input_kind == "text"
    groups = {s: set(dm.splits[s].groups["group"].tolist()) for s in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"])
    assert sum(len(dm.splits[s]) for s in groups) == 40


def test_text_classification_csv_per_split_files(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + "".join(f'"x, {i}",{"pn"[i % 2]}\n' for i in range(6)))
    dm = TextClassificationDataModule(
        TextClassificationConfig(
            train_path=str(tmp_path / "train.csv"),
            val_path=str(tmp_path / "val.csv"),
            test_path=str(tmp_path / "test.csv"),
        )
    )
    dm.setup()
    assert dm.splits["train"].inputs[1] == "x, 1" and len(dm.splits["test"]) == 6


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"text": "a", "label": "x"}\nnot json\n', ".jsonl", "d.jsonl:2: malformed JSON"),
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', ".jsonl", "d.jsonl:2: missing field(s) ['label']"),
        ("text,label\na,x\nb,y,extra\n", ".csv", "d.csv:3: wrong number of columns"),
        ("sentence,label\na,x\n", ".csv", "d.csv:1: header ['sentence', 'label'] lacks column(s) ['text']"),
        ("a\tb\n", ".txt", "cannot tell the format"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_records(path, "text", "label")


def test_unknown_label_in_eval_split_is_an_error(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "tr.jsonl", [{"text": "a", "label": "x"}])
    _write_jsonl(tmp_path / "te.jsonl", [{"text": "b", "label": "x"}, {"text": "c", "label": "zzz"}])
    dm = TextClassificationDataModule(
        TextClassificationConfig(
            train_path=str(tmp_path / "tr.jsonl"),
            val_path=str(tmp_path / "tr.jsonl"),
            test_path=str(tmp_path / "te.jsonl"),
        )
    )
    with pytest.raises(DataError, match="te.jsonl:2: label 'zzz' does not occur"):
        dm.setup()


def test_missing_file_names_the_option(tmp_path: Path) -> None:
    dm = TextClassificationDataModule(TextClassificationConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="nope.jsonl.*data.\\*path"):
        dm.setup()


def _toy_topical_chat(folder: Path) -> None:
    def conversations(prefix: str, n: int) -> dict:
        return {
            f"{prefix}{c}": {
                "config": "A",
                "content": [
                    {
                        "message": f"turn {t} of {c}",
                        "agent": f"agent_{t % 2 + 1}",
                        "sentiment": SENTIMENTS[(c + t) % 8],
                        "knowledge_source": ["FS1"],
                        "turn_rating": "Good",
                    }
                    for t in range(6)
                ],
            }
            for c in range(n)
        }

    folder.mkdir()
    (folder / "conversations_valid_freq.json").write_text(json.dumps(conversations("v", 20)))
    (folder / "conversations_valid_rare.json").write_text(json.dumps(conversations("r", 10)))
    (folder / "conversations_test_freq.json").write_text(json.dumps(conversations("t", 5)))


def test_topical_chat_splits_by_conversation(tmp_path: Path) -> None:
    _toy_topical_chat(tmp_path / "tc")
    dm = TopicalChatSentimentDataModule(
        TopicalChatSentimentConfig(
            data_dir=str(tmp_path / "tc"),
            train_files=["conversations_valid_freq.json", "conversations_valid_rare.json"],
            test_files=["conversations_test_freq.json"],
            val_fraction=0.2,
        )
    )
    dm.setup()
    conv = {s: set(dm.splits[s].groups["conversation"].tolist()) for s in ("train", "val", "test")}
    assert len(conv["val"]) == 6 and len(conv["train"]) == 24 and not conv["train"] & conv["val"]
    assert len(dm.splits["test"]) == 30 and dm.num_classes == 8
    assert all("/agent_" in d for d in dm.splits["train"].groups["device"])


def test_topical_chat_bad_sentiment_is_reported(tmp_path: Path) -> None:
    (tmp_path / "tc").mkdir()
    bad = {"c1": {"content": [{"message": "hi", "agent": "agent_1", "sentiment": "Bored"}]}}
    (tmp_path / "tc" / "x.json").write_text(json.dumps(bad))
    dm = TopicalChatSentimentDataModule(
        TopicalChatSentimentConfig(data_dir=str(tmp_path / "tc"), train_files=["x.json"], test_files=["x.json"])
    )
    with pytest.raises(DataError, match="x.json: conversation c1 turn 0 has sentiment 'Bored'"):
        dm.setup()


@requires_shared_data("topical_chat")
def test_real_topical_chat_sentiment() -> None:
    dm = TopicalChatSentimentDataModule(
        TopicalChatSentimentConfig(
            data_dir=str(SHARED_DATA / "topical_chat"),
            train_files=["conversations_valid_freq.json", "conversations_valid_rare.json"],
            test_files=["conversations_test_freq.json"],
        )
    )
    dm.setup()
    assert len(dm.splits["test"]) > 10_000
    labels = np.bincount(dm.splits["train"].labels.numpy(), minlength=8)
    assert (labels > 0).all() and labels.max() / labels.sum() > 0.3  # real, imbalanced


def test_train_subset_keeps_a_seeded_random_part_with_original_ids() -> None:
    full = DigitsDataModule(DigitsConfig())
    half = DigitsDataModule(DigitsConfig(train_subset_fraction=0.5, train_subset_seed=3))
    other = DigitsDataModule(DigitsConfig(train_subset_fraction=0.5, train_subset_seed=4))
    for dm in (full, half, other):
        dm.setup()
    ids = {n: set(dm.splits["train"].index.tolist()) for n, dm in (("full", full), ("half", half), ("other", other))}
    assert ids["half"] < ids["full"] and 0.4 < len(ids["half"]) / len(ids["full"]) < 0.6
    assert ids["half"] != ids["other"]
    assert half.splits["test"].index.tolist() == full.splits["test"].index.tolist()
    with pytest.raises(DataError, match="train_subset_fraction"):
        DigitsDataModule(DigitsConfig(train_subset_fraction=0.0))
