"""Named segments of an encoder input (``knowledge``, ``history``, ...) and the segment id of every token.

Attention biasing (knob A) addresses encoder positions through these ids: a :class:`SegmentVocabulary` names the
segments, and :class:`SegmentedInputBuilder` tokenizes one text per segment into a single encoder input with a
``segment_ids`` tensor aligned with ``input_ids``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustml.errors import ConfigError

#: Segment id 0: special tokens, padding and anything outside a named segment. Never biased.
OTHER_SEGMENT = "other"
#: The segment of the context code that context augmentation (knob C) appends to the encoder states.
CONTROL_SEGMENT = "control"


@dataclass(frozen=True)
class SegmentVocabulary:
    """Segment names and their ids: ``other`` is 0, then ``names`` in order, then ``control``."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        reserved = {OTHER_SEGMENT, CONTROL_SEGMENT}
        clash = reserved.intersection(self.names)
        if clash:
            raise ConfigError(f"segment names {sorted(clash)} are reserved; rename those segments")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"segment names {list(self.names)} contain duplicates")

    @property
    def all_names(self) -> tuple[str, ...]:
        """Every segment name, indexed by segment id."""
        return (OTHER_SEGMENT, *self.names, CONTROL_SEGMENT)

    def id_of(self, name: str) -> int:
        """The segment id of ``name``; a clear error for an unknown name."""
        try:
            return self.all_names.index(name)
        except ValueError:
            raise ConfigError(f"segment {name!r} is unknown; known segments: {list(self.all_names)}") from None

    def log_values(self, values: Mapping[str, float]) -> Tensor:
        """``log b`` per segment id (float32 ``[num_segments]``); segments not in ``values`` get ``b = 1``."""
        logs = torch.zeros(len(self.all_names), dtype=torch.float32)
        for name, b in values.items():
            logs[self.id_of(name)] = log_bias_value(name, b)
        return logs


def log_bias_value(name: str, b: float) -> float:
    """``log b`` of the bias ``b`` for ``name``; a clear error unless ``b`` is finite and > 0."""
    b = float(b)
    if not (b > 0.0 and b < float("inf")):
        raise ConfigError(f"bias for {name!r} is {b}; a bias b must be a finite number > 0 (b=1 is neutral)")
    return float(torch.log(torch.tensor(b, dtype=torch.float64)))


@dataclass(frozen=True)
class SegmentSpec:
    """One named segment of the encoder input: its marker text and token budget.

    The segment's text is written as ``marker + " " + text``; when it has more than ``max_tokens`` tokens, the first
    (``keep="first"``) or the last (``keep="last"``, e.g. the most recent dialogue turns) ``max_tokens`` are kept.
    """

    name: str
    marker: str = ""
    max_tokens: int | None = None
    keep: str = "first"

    def __post_init__(self) -> None:
        if self.keep not in ("first", "last"):
            raise ConfigError(f"segment {self.name!r}: keep={self.keep!r} must be 'first' or 'last'")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"segment {self.name!r}: max_tokens={self.max_tokens} must be >= 1 or None")


class SegmentedInputBuilder:
    """Tokenizes examples given as ``{segment name: text}`` into ``input_ids``, ``attention_mask``, ``segment_ids``.

    Segments are written in the order of ``segments``, each as ``marker text``, joined by ``separator``; the marker
    belongs to its segment. Special tokens and padding get segment id 0 (``other``). Needs a fast tokenizer (one
    that returns character offsets).
    """

    def __init__(
        self,
        tokenizer,
        segments: Sequence[SegmentSpec],
        max_length: int = 512,
        separator: str = " ",
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; segment ids need token offsets")
        self.tokenizer = tokenizer
        self.segments = tuple(segments)
        self.vocabulary = SegmentVocabulary(tuple(s.name for s in self.segments))
        self.max_length = max_length
        self.separator = separator

    def _truncate(self, spec: SegmentSpec, texts: list[str]) -> list[str]:
        if spec.max_tokens is None:
            return texts
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
            if len(offsets) <= spec.max_tokens:
                out.append(text)
            elif spec.keep == "first":
                out.append(text[: offsets[spec.max_tokens - 1][1]])
            else:
                out.append(text[offsets[-spec.max_tokens][0] :])
        return out

    def __call__(self, examples: Sequence[Mapping[str, str]]) -> dict[str, Tensor]:
        """Tokenize a batch; returns ``input_ids``, ``attention_mask`` and ``segment_ids`` (all ``[B, L]``)."""
        names = [s.name for s in self.segments]
        for i, example in enumerate(examples):
            unknown = set(example) - set(names)
            if unknown:
                raise ConfigError(f"example {i} has segments {sorted(unknown)} not in the builder's segments {names}")
        columns = {
            spec.name: self._truncate(spec, [str(ex.get(spec.name, "")) for ex in examples]) for spec in self.segments
        }
        texts, starts = [], []
        for row in range(len(examples)):
            parts, row_starts, cursor = [], [], 0
            for spec in self.segments:
                row_starts.append(cursor)
                piece = " ".join(p for p in (spec.marker, columns[spec.name][row]) if p)
                if piece:
                    parts.append(piece)
                    cursor += len(piece) + len(self.separator)
            texts.append(self.separator.join(parts))
            starts.append(row_starts)
        enc = self.tokenizer(
            texts,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=False,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        segment_index = torch.searchsorted(
            torch.tensor(starts, dtype=torch.long), enc["offset_mapping"][..., 0].contiguous(), right=True
        )
        segment_ids = torch.where(enc["special_tokens_mask"].bool(), 0, segment_index)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "segment_ids": segment_ids}
