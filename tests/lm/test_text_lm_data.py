"""``data=text_lm``: readers of each format, the split by group, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, requires_shared_data
from trustml.data.text_lm import TextLMConfig, TextLMDataModule, group_part, held_out_groups
from trustml.errors import ConfigError, DataError


def _module(**options) -> TextLMDataModule:
    data = TextLMDataModule(TextLMConfig(**options))
    data.setup("fit")
    return data


def _groups(data: TextLMDataModule) -> dict[str, set[str]]:
    return {name: set(split.groups["group"].tolist()) for name, split in data.splits.items()}


def test_bold_wiki_and_topical_chat_are_split_by_entity_and_conversation(tmp_path: Path) -> None:
    bold = tmp_path / "profession_wiki.json"
    bold.write_text(
        json.dumps(
            {
                f"job{j}": {f"Entity {j}-{e}": [f"Sentence {s} of {j}-{e}." for s in range(3)] for e in range(15)}
                for j in range(2)
            }
        )
    )
    chat = tmp_path / "conversations_toy.json"
    content = [{"message": f"turn {t}", "agent": "agent_1", "sentiment": "Neutral"} for t in range(4)]
    chat.write_text(json.dumps({f"conv{c}": {"content": content} for c in range(20)}))
    data = _module(paths=[str(bold), str(chat)], val_fraction=0.2, test_fraction=0.2)
    groups = _groups(data)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    n = sum(len(s) for s in data.splits.values())
    assert n == 2 * 15 * 3 + 20 * 4
    assert {g for gs in groups.values() for g in gs} == {f"Entity {j}-{e}" for j in range(2) for e in range(15)} | {
        f"conv{c}" for c in range(20)
    }
    # the split rule needs no other group: any tool can tell which entities a run held out
    for part in ("train", "val", "test"):
        assert held_out_groups({g for gs in groups.values() for g in gs}, 0.2, 0.2, 0, part) == groups[part]
    assert data.input_kind == "lm_text" and data.num_classes == 0
    # a different split seed moves groups
    other = _groups(_module(paths=[str(bold), str(chat)], val_fraction=0.2, test_fraction=0.2, split_seed=1))
    assert other["test"] != groups["test"]


def test_group_part_fractions_hold_over_many_groups() -> None:
    parts = [group_part(f"g{i}", 0.1, 0.2, 3) for i in range(20000)]
    assert parts.count("test") / len(parts) == pytest.approx(0.2, abs=0.01)
    assert parts.count("val") / len(parts) == pytest.approx(0.1, abs=0.01)


def test_plain_text_lines_and_caps(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"line number {i}" for i in range(300)) + "\n\n")
    data = _module(paths=[str(path)], max_train_texts=50, max_eval_texts=10)
    assert len(data.splits["train"]) == 50 and len(data.splits["val"]) == 10 and len(data.splits["test"]) == 10
    ids = [set(s.index.tolist()) for s in data.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"paths": []}, ConfigError, "data.paths is empty"),
        ({"paths": ["x"], "format": "csv"}, ConfigError, "data.format='csv' is unknown"),
        ({"paths": ["x"], "val_fraction": 0.6, "test_fraction": 0.5}, ConfigError, "sum below 1"),
        ({"paths": ["{tmp}/missing.txt"]}, DataError, "is not a file"),
        ({"paths": ["{tmp}/bad.jsonl"], "group_field": "doc"}, DataError, "no group field 'doc'"),
        ({"paths": ["{tmp}/one.txt"]}, DataError, "fell into the"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, options: dict, error: type, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "one.txt").write_text("a single line\n")
    options = {k: [p.format(tmp=tmp_path) for p in v] if k == "paths" else v for k, v in options.items()}
    with pytest.raises(error, match=message):
        _module(**options)


@requires_shared_data("bold", "wikipedia")
def test_real_bold_wiki_has_no_entity_in_two_splits() -> None:
    path = SHARED_DATA / "bold" / "wikipedia" / "profession_wiki.json"
    data = _module(paths=[str(path)])
    groups = _groups(data)
    assert not (groups["train"] & groups["test"]) and len(groups["test"]) > 50
    assert sum(len(s) for s in data.splits.values()) > 10000
