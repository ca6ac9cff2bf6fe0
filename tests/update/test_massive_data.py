"""``data=massive``: two stages with one fixed label set, file ids as sample ids, clear errors, the real folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, requires_shared_data
from tests.update.conftest import INTENTS
from trustml.data.massive import MassiveConfig, MassiveDataModule
from trustml.errors import ConfigError, DataError


def load(path: Path, stage: str) -> MassiveDataModule:
    data = MassiveDataModule(MassiveConfig(path=str(path), stage=stage))
    data.setup()
    return data


def test_stages_share_labels_and_ids(massive_dir: Path) -> None:
    old, new = load(massive_dir, "old"), load(massive_dir, "updated")
    assert old.label_names == new.label_names == list(INTENTS)
    assert old.num_classes == new.num_classes == 4
    assert 3 not in set(old.splits["train"].labels.tolist())  # the old training data lacks the last intent
    assert 3 in set(new.splits["train"].labels.tolist())
    assert {k: len(v) for k, v in old.splits.items()} == {"train": 60, "val": 16, "test": 40}
    assert {k: len(v) for k, v in new.splits.items()} == {"train": 100, "val": 28, "test": 40}
    # sample ids are the files' ids: the shared test split has the same ids (and labels) in both stages
    assert old.splits["test"].index.tolist() == new.splits["test"].index.tolist()
    first = json.loads((massive_dir / "updated" / "test.jsonl").read_text().splitlines()[0])
    assert new.splits["test"].index[0].item() == int(first["id"])
    assert new.splits["test"].inputs[0] == first["text"]


def rewrite(path: Path, change) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_input_is_refused_clearly(massive_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.stage must be one of"):
        MassiveConfig(path=str(massive_dir), stage="new")
    with pytest.raises(DataError, match="data.path=.* is not a folder"):
        load(tmp_path / "absent", "old")

    def rename(rows: list[dict]) -> None:
        rows[0]["label_name"] = "something_else"

    rewrite(massive_dir / "old" / "dev.jsonl", rename)
    with pytest.raises(DataError, match=r"dev.jsonl:1: label 0 is named 'something_else'"):
        load(massive_dir, "old")

    def drop_text(rows: list[dict]) -> None:
        del rows[1]["text"]

    rewrite(massive_dir / "updated" / "train.jsonl", drop_text)
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field\(s\) \['text'\]"):
        load(massive_dir, "updated")


def test_an_id_in_two_splits_is_refused(massive_dir: Path) -> None:
    test_id = json.loads((massive_dir / "old" / "test.jsonl").read_text().splitlines()[0])["id"]

    def reuse(rows: list[dict]) -> None:
        rows[0]["id"] = test_id

    rewrite(massive_dir / "old" / "train.jsonl", reuse)
    with pytest.raises(DataError, match=f"id {test_id} also occurs in the train split"):
        load(massive_dir, "old")


@requires_shared_data("massive_add_data")
def test_the_real_add_data_update() -> None:
    root = SHARED_DATA / "massive_add_data"
    old, new = load(root, "old"), load(root, "updated")
    assert old.num_classes == new.num_classes == 60
    assert old.label_names == new.label_names
    assert {k: len(v) for k, v in old.splits.items()} == {"train": 1000, "val": 333, "test": 4000}
    assert {k: len(v) for k, v in new.splits.items()} == {"train": 1500, "val": 500, "test": 4000}
    assert len(set(old.splits["train"].labels.tolist())) == 59
    assert old.splits["test"].index.tolist() == new.splits["test"].index.tolist()
