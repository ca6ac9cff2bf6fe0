"""``data=segments_jsonl``: any JSONL file of named text segments as source -> reference pairs for generation.

Each line is a JSON object holding one text per segment (``{"knowledge": ..., "history": ..., "reference": ...}``).
An input template says how the segments are joined into the model's input, e.g.
``"knowledge: {knowledge} history: {history}"`` or ``"Instruction: {instruction}\\nText: {text}\\nAnswer:"``: each
``{name}`` is one segment, the literal text around it is written as it is (it belongs to no segment). Knobs A/D of
``method=knob_generator`` address the segments by these names. ``target`` names the field holding the reference
output (null: none; reference metrics are then skipped). Samples are :class:`Seq2SeqExample` (``input_kind``
``seq2seq``), so the same file can also train an encoder-decoder or a causal LM on segments -> reference.

``path`` and ``train_path`` are file paths, or ``sample:<name>`` for a sample shipped in ``trustml/data/samples/``
(``sample:summarization``, ``sample:instruction``, ``sample:grounded``). The test split is ``path``; training and
validation come from ``train_path`` (split by ``val_fraction``) and are a copy of the test split when it is unset
(generation only: ``method=knob_generator`` refuses to train then).

Bad input is refused with the line: a template field the line does not have, an empty segment, a line that is not
an object of strings.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.data.text_files import check_encoding, jsonl_rows
from trustml.data.topical_chat_grounded import SEQ2SEQ_INPUT_KIND, Seq2SeqExample
from trustml.errors import ConfigError, DataError
from trustml.registry import register

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLE_PREFIX = "sample:"
#: Names a template may not use: segment ids 0 (``other``) and the appended context code (``control``).
RESERVED_SEGMENTS = ("other", "control")


def resolve_sample_path(path: str, option: str) -> Path:
    """``path`` itself, or the packaged sample file ``samples/<name>.jsonl`` for ``sample:<name>``."""
    if not path.startswith(SAMPLE_PREFIX):
        return Path(path)
    name = path[len(SAMPLE_PREFIX) :]
    sample = SAMPLES_DIR / f"{name}.jsonl"
    if not sample.is_file():
        known = sorted(p.stem for p in SAMPLES_DIR.glob("*.jsonl"))
        raise ConfigError(f"{option}={path!r}: no packaged sample {name!r}; known samples: {known}")
    return sample


@dataclass(frozen=True)
class TemplatePiece:
    """One piece of an input template: literal text (``segment`` None) or the text of segment ``segment``."""

    text: str
    segment: str | None = None


@dataclass(frozen=True)
class InputTemplate:
    """A parsed input template: literal text and ``{segment}`` fields, in order.

    :meth:`render` writes one example as a string and the character span ``[start, end)`` of every segment in it,
    which a tokenizer's offsets turn into segment ids.
    """

    template: str
    pieces: tuple[TemplatePiece, ...]

    @classmethod
    def parse(cls, template: str, option: str = "data.template") -> InputTemplate:
        """Parse ``template`` (``str.format`` syntax with plain names only); each segment may appear once."""
        pieces: list[TemplatePiece] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(
                f"{option}={template!r} is not a valid template ({exc}); write segments as {{name}}"
            ) from None
        for literal, name, spec, conversion in parsed:
            if literal:
                pieces.append(TemplatePiece(literal))
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ConfigError(
                    f"{option}={template!r}: field {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is not a plain segment name; write segments as {{name}}"
                )
            if name in RESERVED_SEGMENTS:
                raise ConfigError(f"{option}: segment name {name!r} is reserved ({list(RESERVED_SEGMENTS)}); rename it")
            if any(p.segment == name for p in pieces):
                raise ConfigError(f"{option}={template!r} uses segment {{{name}}} twice; use each segment once")
            pieces.append(TemplatePiece("", name))
        if not any(p.segment for p in pieces):
            raise ConfigError(f"{option}={template!r} names no segment; write at least one {{name}}")
        return cls(template, tuple(pieces))

    @classmethod
    def from_segment_names(cls, names: list[str] | tuple[str, ...]) -> InputTemplate:
        """``"name1: {name1} name2: {name2}"`` (the layout of ``hf_seq2seq``'s Topical-Chat input builder)."""
        return cls.parse(" ".join(f"{name}: {{{name}}}" for name in names))

    @property
    def segment_names(self) -> tuple[str, ...]:
        """The segment names, in template order."""
        return tuple(p.segment for p in self.pieces if p.segment is not None)

    def render(self, segments: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
        """The input text of ``segments`` and each segment's character span in it."""
        parts, spans, cursor = [], {}, 0
        for piece in self.pieces:
            text = piece.text if piece.segment is None else segments[piece.segment]
            if piece.segment is not None:
                spans[piece.segment] = (cursor, cursor + len(text))
            parts.append(text)
            cursor += len(text)
        return "".join(parts), spans


def segments_of_line(row: Any, template: InputTemplate, target: str | None, where: str) -> tuple[dict[str, str], str]:
    """The template's segments and the reference text of one parsed JSONL line, checked."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a line must be a JSON object of named segments, got {type(row).__name__}")
    missing = [name for name in template.segment_names if name not in row]
    if missing:
        raise DataError(
            f"{where}: segment(s) {missing} of data.template are not in this line (it has {sorted(row)}); fix the "
            "file or data.template"
        )
    segments = {}
    for name in template.segment_names:
        value = row[name]
        if not isinstance(value, str):
            raise DataError(f"{where}: segment {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: segment {name!r} is empty; give it text or drop {{{name}}} from data.template")
        segments[name] = value
    reference = ""
    if target is not None:
        if target not in row:
            raise DataError(f"{where}: the reference field data.target={target!r} is not in this line ({sorted(row)})")
        if not isinstance(row[target], str):
            raise DataError(f"{where}: the reference {target!r} must be a string, got {type(row[target]).__name__}")
        reference = row[target]
    return segments, reference


def read_segment_examples(
    path: Path, template: InputTemplate, target: str | None, id_field: str | None, encoding: str
) -> list[Seq2SeqExample]:
    """Every line of ``path`` as a :class:`Seq2SeqExample` (``conversation_id``: the ``id_field`` value or the line)."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check data.path / data.train_path")
    examples = []
    for line_no, row in jsonl_rows(path, encoding):
        where = f"{path}:{line_no}"
        segments, reference = segments_of_line(row, template, target, where)
        ident = str(row.get(id_field, line_no)) if id_field is not None and isinstance(row, dict) else str(line_no)
        examples.append(Seq2SeqExample(segments, reference, conversation_id=ident, turn_index=line_no))
    if not examples:
        raise DataError(f"{path} holds no example lines")
    return examples


@dataclass
class SegmentsJsonlConfig(DataOptions):
    """Options of ``data=segments_jsonl`` (module doc).

    ``max_segment_tokens``: per segment, keep at most this many tokens (the first ones, or the last for the
    segments listed in ``keep_last``, e.g. the most recent dialogue turns); an input still longer than the model's
    context is refused, naming the line.
    """

    path: str = "sample:instruction"
    template: str = "Instruction: {instruction}\nText: {text}\nAnswer:"
    target: str | None = "reference"
    id_field: str | None = "id"
    train_path: str | None = None
    val_fraction: float = 0.1
    max_segment_tokens: dict[str, int] = field(default_factory=dict)
    keep_last: list[str] = field(default_factory=list)
    max_examples: int | None = None
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        super().__post_init__()
        parsed = InputTemplate.parse(self.template)
        self.max_segment_tokens = {str(k): int(v) for k, v in dict(self.max_segment_tokens).items()}
        self.keep_last = [str(name) for name in self.keep_last]
        named = (("data.max_segment_tokens", list(self.max_segment_tokens)), ("data.keep_last", self.keep_last))
        for option, names in named:
            unknown = sorted(set(names) - set(parsed.segment_names))
            if unknown:
                raise ConfigError(
                    f"{option} names segment(s) {unknown} that data.template does not have; its segments are "
                    f"{list(parsed.segment_names)}"
                )
        bad = {k: v for k, v in self.max_segment_tokens.items() if v < 1}
        if bad:
            raise ConfigError(f"data.max_segment_tokens={bad}: a segment keeps at least 1 token")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must lie in (0, 1)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"data.max_examples={self.max_examples} must be >= 1 (or null for all)")
        resolve_sample_path(self.path, "data.path")
        if self.train_path is not None:
            resolve_sample_path(self.train_path, "data.train_path")
        check_encoding(self.encoding, "data.encoding")


@register("data", "segments_jsonl", dataclass=SegmentsJsonlConfig)
class SegmentsJsonl(TrustDataModule):
    """JSONL lines of named segments joined by an input template (module doc); sample ids are line positions
    (training file first, then the test file)."""

    input_kind: ClassVar[str] = SEQ2SEQ_INPUT_KIND
    config: SegmentsJsonlConfig

    def __init__(self, config: SegmentsJsonlConfig) -> None:
        super().__init__(config)
        #: How the segments are joined (``method=knob_generator`` tokenizes with it).
        self.input_template = InputTemplate.parse(config.template)

    @property
    def has_training_data(self) -> bool:
        """Whether ``train_path`` is set (else train/val are copies of the test split, for generation only)."""
        return self.config.train_path is not None

    def _read(self, path: str, option: str) -> list[Seq2SeqExample]:
        c = self.config
        return read_segment_examples(
            resolve_sample_path(path, option), self.input_template, c.target, c.id_field, c.encoding
        )

    @staticmethod
    def _split(examples: list[Seq2SeqExample], ids: np.ndarray) -> Split:
        return Split(
            inputs=examples,
            labels=torch.zeros(len(examples), dtype=torch.long),
            index=torch.as_tensor(ids, dtype=torch.long),
            groups={"id": np.array([e.conversation_id for e in examples], dtype=object)},
        )

    def load_splits(self) -> dict[str, Split]:
        c = self.config
        test = self._read(c.path, "data.path")[: c.max_examples]
        if c.train_path is None:
            split = self._split(test, np.arange(len(test)))
            return {"train": split, "val": split, "test": split}
        pool = self._read(c.train_path, "data.train_path")
        rng = np.random.default_rng(c.split_seed)
        order = rng.permutation(len(pool))
        n_val = max(1, round(c.val_fraction * len(pool)))
        if n_val >= len(pool):
            raise DataError(f"data.train_path has {len(pool)} lines: too few to hold out a validation part")
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        return {
            "train": self._split([pool[i] for i in train_rows], train_rows),
            "val": self._split([pool[i] for i in val_rows], val_rows),
            "test": self._split(test, len(pool) + np.arange(len(test))),
        }
