"""``data.counterfactual=swap|append`` on ``data=text_classification``: train texts swapped or doubled, ids, labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_train
from trustml.data.text_classification import TextClassificationConfig, TextClassificationDataModule
from trustml.errors import ConfigError
from trustml.fairness.counterfactual import swap_protected_words
from trustml.runner import run


def _write(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": y, "who": w}) + "\n" for t, y, w in rows))
    return str(path)


TRAIN = [
    ("He liked the film", "pos", "a"),
    ("The film was dull", "neg", "b"),
    ("She hated her job", "neg", "a"),
    ("Nice weather today", "pos", "c"),
    ("My brother loved it", "pos", "b"),
]


def _module(tmp_path: Path, **options: object) -> TextClassificationDataModule:
    train = _write(tmp_path / "train.jsonl", [(t, y, w) for t, y, w in TRAIN])
    val = _write(tmp_path / "val.jsonl", [("He was fine", "pos", "a"), ("bad", "neg", "b")])
    test = _write(tmp_path / "test.jsonl", [("She was fine", "pos", "c"), ("awful", "neg", "a")])
    config = TextClassificationConfig(train_path=train, val_path=val, test_path=test, group_field="who", **options)
    module = TextClassificationDataModule(config)
    module.setup("fit")
    return module


def test_append_adds_the_swapped_copies_with_labels_groups_and_new_ids(tmp_path: Path) -> None:
    plain = _module(tmp_path)
    module = _module(tmp_path, counterfactual="append")
    train, base = module.splits["train"], plain.splits["train"]
    changed = [0, 2, 4]  # the texts with a gendered word
    assert len(train) == len(base) + len(changed)
    assert train.inputs[: len(base)] == base.inputs
    assert train.inputs[len(base) :] == ["She liked the film", "He hated his job", "My sister loved it"]
    assert train.labels.tolist() == base.labels.tolist() + [base.labels[i].item() for i in changed]
    assert module.label_names == plain.label_names == ["neg", "pos"]
    assert train.groups["group"].tolist() == ["a", "b", "a", "c", "b", "a", "a", "b"]
    # new ids follow every existing id (train 0-4, val 5-6, test 7-8), so all ids stay unique
    assert train.index.tolist() == [0, 1, 2, 3, 4, 9, 10, 11]
    for split in ("val", "test"):
        assert module.splits[split].inputs == plain.splits[split].inputs
        assert module.splits[split].index.tolist() == plain.splits[split].index.tolist()
    every_id = np.concatenate([module.splits[s].index.numpy() for s in ("train", "val", "test")])
    assert len(set(every_id.tolist())) == len(every_id)


def test_swap_replaces_the_changed_texts_and_keeps_ids_and_labels(tmp_path: Path) -> None:
    plain = _module(tmp_path)
    train = _module(tmp_path, counterfactual="swap").splits["train"]
    base = plain.splits["train"]
    assert train.inputs == [swap_protected_words(t).text for t in base.inputs]
    assert train.inputs[1] == base.inputs[1] and train.inputs[0] == "She liked the film"
    assert train.index.tolist() == base.index.tolist() and train.labels.tolist() == base.labels.tolist()


def test_custom_word_pairs_file(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text("source: a test list\npairs:\n  - [film, play]\n")
    train = _module(tmp_path, counterfactual="append", counterfactual_pairs=str(pairs)).splits["train"]
    assert train.inputs[len(TRAIN) :] == ["He liked the play", "The play was dull"]


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"counterfactual": "double"}, "data.counterfactual must be one of"),
        ({"counterfactual": "none", "counterfactual_pairs": "x.yaml"}, "data.counterfactual=none"),
        ({"counterfactual": "swap", "counterfactual_pairs": "/no/such/pairs.yaml"}, "data.counterfactual_pairs"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        TextClassificationConfig(path="any.jsonl", **options)


def test_bad_option_refused_from_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", TRAIN * 4)
    cfg = compose_train(["data=text_classification", f"data.path={path}", "data.counterfactual=both"], tmp_path / "r")
    with pytest.raises(ConfigError, match="data.counterfactual"):
        run(cfg)
