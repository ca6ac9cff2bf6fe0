"""Text classification from JSONL or CSV files with configurable text, label and group columns."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from trustml.data.base import DataOptions, Split, TrustDataModule, grouped_split, stratified_split
from trustml.data.bucketing import length_bucketed_loader
from trustml.data.text_files import check_encoding, read_text
from trustml.errors import ConfigError, DataError
from trustml.fairness.counterfactual import counterfactual_texts, load_word_pairs
from trustml.registry import register

COUNTERFACTUAL_MODES = ("none", "swap", "append")


def bucketed_or_plain(datamodule: TrustDataModule, split: str, shuffle: bool) -> DataLoader:
    """The loader of ``split``: length-bucketed when ``datamodule.config.bucket_by_length`` is set and no other
    training batch sampler (Poisson sampling of DP-SGD) is, else the base class's plain loader."""
    bucketed = bool(getattr(datamodule.config, "bucket_by_length", False))
    if not bucketed or (split == "train" and datamodule.train_batch_sampler_factory is not None):
        return TrustDataModule._loader(datamodule, split, shuffle)
    size = datamodule.batch_size if split == "train" else datamodule.eval_batch_size
    return length_bucketed_loader(datamodule.splits[split], size, shuffle)


@dataclass
class TextRecord:
    """One labelled text read from a file, with the line it came from."""

    text: str
    label: str
    group: str | None
    line: int


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the suffix '{suffix}'; set data.format=jsonl or csv")


def read_records(
    path: str | Path,
    text_field: str,
    label_field: str,
    group_field: str | None = None,
    fmt: str = "auto",
    encoding: str = "utf-8",
    encoding_option: str = "data.encoding",
) -> list[TextRecord]:
    """Read ``(text, label, group)`` records from a JSONL or CSV file; errors name the file and line.

    The file is decoded by ``encoding`` (a codec name, or ``auto``: see :mod:`trustml.data.text_files`); text
    that does not decode is a :class:`DataError` naming the line and ``encoding_option``, the setting to change.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (check the data.*path option)")
    fmt = _format_of(path, fmt)
    fields = [f for f in (text_field, label_field, group_field) if f]
    records: list[TextRecord] = []
    # newline="": lines end at \n, \r or \r\n as in a file opened for csv, and the endings reach the csv reader
    with io.StringIO(read_text(path, encoding, encoding_option), newline="") as handle:
        if fmt == "jsonl":
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: malformed JSON ({exc.msg}); fix or remove that line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object per line")
                missing = [f for f in fields if f not in row]
                if missing:
                    raise DataError(
                        f"{path}:{line_no}: missing field(s) {missing}; set data.text_field/label_field/group_field"
                    )
                records.append(_record(row, text_field, label_field, group_field, line_no))
        elif fmt == "csv":
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = [f for f in fields if f not in header]
            if missing:
                raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; set data.text_field/label_field")
            for row in reader:
                line_no = reader.line_num
                if None in row or any(row[f] is None for f in fields):
                    raise DataError(f"{path}:{line_no}: wrong number of columns (expected {len(header)})")
                records.append(_record(row, text_field, label_field, group_field, line_no))
        else:
            raise DataError(f"data.format must be auto, jsonl or csv, got '{fmt}'")
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _record(row: dict, text_field: str, label_field: str, group_field: str | None, line_no: int) -> TextRecord:
    text = row[text_field]
    if not isinstance(text, str):
        text = str(text)
    group = str(row[group_field]) if group_field else None
    return TextRecord(text=text, label=str(row[label_field]), group=group, line=line_no)


@dataclass
class TextClassificationConfig(DataOptions):
    """Options of ``data=text_classification`` (one file split by fractions, or one file per split).

    ``encoding``: how the files are decoded: ``utf-8`` (default; a file that is not UTF-8 is refused with the
    line of the first bad byte), any Python codec name (``latin-1``, ``cp1252``, ...), or ``auto`` (UTF-8, else
    Latin-1 with a warning); see :mod:`trustml.data.text_files`.

    ``counterfactual``: counterfactual augmentation of the training split only (protected words swapped by the
    word pairs of ``counterfactual_pairs``, default the shipped gender list; see
    :mod:`trustml.fairness.counterfactual`): ``none`` (default), ``swap`` (each training text that contains a
    listed word is replaced by its counterfactual; same id and label) or ``append`` (the counterfactuals of
    those texts are added, with their labels and new sample ids after all existing ones).

    ``bucket_by_length``: batches of texts of similar length (:mod:`trustml.data.bucketing`), so that a text
    model's dynamic padding pads little; training batches stay random within pools of similar lengths,
    evaluation batches go in length order. Off by default (plain random batches).
    """

    path: str | None = None
    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    format: str = "auto"
    encoding: str = "utf-8"
    text_field: str = "text"
    label_field: str = "label"
    group_field: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    counterfactual: str = "none"
    counterfactual_pairs: str | None = None
    bucket_by_length: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.path is None and self.train_path is None:
            raise DataError("data=text_classification needs data.path (one file) or data.train_path")
        check_encoding(self.encoding, "data.encoding")
        if self.counterfactual not in COUNTERFACTUAL_MODES:
            raise ConfigError(
                f"data.counterfactual must be one of {list(COUNTERFACTUAL_MODES)}, got {self.counterfactual!r}"
            )
        if self.counterfactual_pairs is not None:
            if self.counterfactual == "none":
                raise ConfigError(
                    "data.counterfactual_pairs is set but data.counterfactual=none; set data.counterfactual=swap or "
                    "append (or drop data.counterfactual_pairs)"
                )
            try:
                load_word_pairs(self.counterfactual_pairs)
            except ConfigError as exc:
                raise ConfigError(f"data.counterfactual_pairs: {exc}") from None


@register("data", "text_classification", dataclass=TextClassificationConfig)
class TextClassificationDataModule(TrustDataModule):
    """Labelled texts from JSONL/CSV; label names sorted from the training split; optional grouped split."""

    input_kind = "text"
    config: TextClassificationConfig

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Length-bucketed batches with ``data.bucket_by_length`` (unless another sampler, e.g. Poisson, is set)."""
        return bucketed_or_plain(self, split, shuffle)

    def _read(self, path: str) -> list[TextRecord]:
        c = self.config
        return read_records(path, c.text_field, c.label_field, c.group_field, c.format, c.encoding)

    def load_splits(self) -> dict[str, Split]:
        c = self.config
        if c.path is not None:
            records = self._read(c.path)
            parts = self._split_positions(records)
            by_split = {
                name: [records[i] for i in rows] for name, rows in zip(("train", "val", "test"), parts, strict=True)
            }
            sources = dict.fromkeys(by_split, c.path)
        else:
            paths = {"train": c.train_path, "val": c.val_path, "test": c.test_path}
            absent = [f"data.{k}_path" for k, v in paths.items() if v is None]
            if absent:
                raise DataError(f"with data.train_path set, also set {', '.join(absent)} (or use data.path)")
            by_split = {name: self._read(p) for name, p in paths.items()}
            sources = paths
        self.label_names = sorted({r.label for r in by_split["train"]})
        label_id = {name: i for i, name in enumerate(self.label_names)}
        splits, offset = {}, 0
        for name, records in by_split.items():
            unknown = [r for r in records if r.label not in label_id]
            if unknown:
                raise DataError(
                    f"{sources[name]}:{unknown[0].line}: label '{unknown[0].label}' does not occur in the training "
                    f"split (known: {self.label_names})"
                )
            groups = {"group": np.array([r.group for r in records], dtype=object)} if c.group_field else {}
            splits[name] = Split(
                inputs=[r.text for r in records],
                labels=np.array([label_id[r.label] for r in records]),
                index=np.arange(offset, offset + len(records)),
                groups=groups,
            )
            offset += len(records)
        if c.counterfactual != "none":
            splits["train"] = self._counterfactual_train(splits["train"], next_id=offset)
        return splits

    def _counterfactual_train(self, train: Split, next_id: int) -> Split:
        """``data.counterfactual``: the training split with its changed texts swapped or their swaps appended."""
        c = self.config
        texts = list(train.inputs)
        swapped, changed = counterfactual_texts(texts, load_word_pairs(c.counterfactual_pairs))
        if c.counterfactual == "swap":
            return Split(inputs=swapped, labels=train.labels, index=train.index, groups=train.groups)
        rows = np.flatnonzero(changed)
        return Split(
            inputs=texts + [swapped[i] for i in rows],
            labels=np.concatenate([train.labels.numpy(), train.labels.numpy()[rows]]),
            index=np.concatenate([train.index.numpy(), np.arange(next_id, next_id + len(rows))]),
            groups={k: np.concatenate([v, v[rows]]) for k, v in train.groups.items()},
        )

    def _split_positions(self, records: list[TextRecord]) -> list[np.ndarray]:
        c = self.config
        fractions = (1.0 - c.val_fraction - c.test_fraction, c.val_fraction, c.test_fraction)
        if c.group_field:
            return grouped_split(np.array([r.group for r in records], dtype=object), fractions, c.split_seed)
        labels = np.array([r.label for r in records])
        try:
            return stratified_split(labels, fractions, c.split_seed)
        except ValueError as exc:
            raise DataError(f"{c.path}: cannot split {len(records)} records by label ({exc}); add more data") from None
