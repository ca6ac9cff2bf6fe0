"""``data=massive``: the MASSIVE "add data" update of Schumann et al. (2023), intent classification in 60 classes.

The folder (``data.path``, default ``../shared/data/massive_add_data``) holds two stages of one update:
``old/{train,dev,test}.jsonl`` (1,000 / 333 / 4,000 utterances) and ``updated/{train,dev,test}.jsonl``
(1,500 / 500 / 4,000; the old training data plus 500 more; the same test set). Each line is
``{"id", "label" (int), "text", "label_name", ...}``. ``data.stage=old|updated`` selects the stage; ``dev`` is
the validation split.

The label set is fixed across the stages: class ``c`` is the file's integer label ``c`` and its name is that
label's ``label_name`` (read from every split, checked against ``info.json`` when present), so an old model
(trained on ``old/``, whose training split lacks one intent) and a new one (``updated/``) have the same 60
outputs in the same order, as interpolating their weights needs. Sample ids are the files' ``id`` values, the
same for an utterance in both stages (the shared test set has the same ids, so flip reports of both name the
same utterances). ``bucket_by_length`` (default on) batches utterances of similar length
(:mod:`trustml.data.bucketing`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.data.text_classification import bucketed_or_plain
from trustml.data.text_files import jsonl_rows, read_text
from trustml.errors import ConfigError, DataError
from trustml.registry import register

STAGES = ("old", "updated")
#: Split of the data module -> file stem in a stage folder.
SPLIT_FILES = {"train": "train", "val": "dev", "test": "test"}
FIELDS = ("id", "label", "text", "label_name")


@dataclass
class MassiveConfig(DataOptions):
    """Options of ``data=massive``: the folder, the stage, and length-bucketed batches (see the module doc)."""

    path: str = "${paths.shared_data_dir}/massive_add_data"
    stage: str = "updated"
    bucket_by_length: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ConfigError(f"data.stage must be one of {list(STAGES)}, got {self.stage!r}")


@dataclass(frozen=True)
class Utterance:
    """One line of a MASSIVE JSONL file."""

    id: int
    label: int
    text: str
    label_name: str
    line: int


def read_utterances(path: Path) -> list[Utterance]:
    """The utterances of one JSONL file; a missing field, a bad id or label is a DataError naming file and line."""
    if not path.is_file():
        raise DataError(
            f"MASSIVE file not found: {path}; set data.path to the massive_add_data folder (holding old/ and updated/)"
        )
    rows: list[Utterance] = []
    for line_no, row in jsonl_rows(path):
        missing = [f for f in FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise DataError(f"{path}:{line_no}: missing field(s) {missing}; a MASSIVE line has {list(FIELDS)}")
        try:
            ident, label = int(row["id"]), int(row["label"])
        except (TypeError, ValueError):
            raise DataError(f"{path}:{line_no}: id {row['id']!r} and label {row['label']!r} must be integers") from None
        if label < 0:
            raise DataError(f"{path}:{line_no}: negative label {label}")
        rows.append(Utterance(ident, label, str(row["text"]), str(row["label_name"]), line_no))
    if not rows:
        raise DataError(f"{path}: no utterances")
    return rows


def label_map(files: dict[Path, list[Utterance]], info: Path | None) -> list[str]:
    """Label names by integer label, from every file (each id must keep one name), checked against ``info``."""
    names: dict[int, str] = {}
    for path, rows in files.items():
        for row in rows:
            known = names.setdefault(row.label, row.label_name)
            if known != row.label_name:
                raise DataError(
                    f"{path}:{row.line}: label {row.label} is named {row.label_name!r} here but {known!r} elsewhere"
                )
    if info is not None and info.is_file():
        listed = json.loads(read_text(info)).get("labels")
        if isinstance(listed, list):
            for label, name in names.items():
                if label >= len(listed) or listed[label] != name:
                    raise DataError(f"{info}: labels list disagrees with the files on label {label} ({name!r})")
            return [str(name) for name in listed]
    absent = sorted(set(range(max(names) + 1)) - set(names))
    if absent:
        raise DataError(f"labels {absent} occur in no file of {sorted({str(p.parent) for p in files})}")
    return [names[i] for i in range(len(names))]


@register("data", "massive", dataclass=MassiveConfig)
class MassiveDataModule(TrustDataModule):
    """The ``old`` or ``updated`` stage of MASSIVE add-data: train / val (``dev``) / test with 60 fixed intents."""

    input_kind = "text"
    config: MassiveConfig

    def load_splits(self) -> dict[str, Split]:
        root = Path(self.config.path)
        if not root.is_dir():
            raise DataError(
                f"data.path={root} is not a folder; point it at massive_add_data (with old/ and updated/), "
                "e.g. ../shared/data/massive_add_data"
            )
        folder = root / self.config.stage
        files = {name: folder / f"{stem}.jsonl" for name, stem in SPLIT_FILES.items()}
        rows = {name: read_utterances(path) for name, path in files.items()}
        self.label_names = label_map({files[n]: r for n, r in rows.items()}, folder / "info.json")
        seen: dict[int, str] = {}
        splits = {}
        for name, split_rows in rows.items():
            for row in split_rows:
                other = seen.setdefault(row.id, name)
                if other != name:
                    raise DataError(f"{files[name]}:{row.line}: id {row.id} also occurs in the {other} split")
            ids = np.array([r.id for r in split_rows], dtype=np.int64)
            if len(np.unique(ids)) != len(ids):
                raise DataError(f"{files[name]}: ids are not unique within the file")
            splits[name] = Split(
                inputs=[r.text for r in split_rows],
                labels=np.array([r.label for r in split_rows], dtype=np.int64),
                index=ids,
            )
        return splits

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Length-bucketed batches with ``data.bucket_by_length`` (see :mod:`trustml.data.bucketing`)."""
        return bucketed_or_plain(self, split, shuffle)
