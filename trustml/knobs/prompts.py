"""Model inputs with segment ids from an input template, for encoder-decoders and decoder-only language models.

:class:`TemplateInputBuilder` writes each example through an :class:`~trustml.data.segments_jsonl.InputTemplate`
(literal text + named segments), tokenizes it once with character offsets and gives every token the id of the
segment its first character lies in (0 = ``other``: template text, special tokens, padding). Two layouts:

- ``encoder``: the tokenizer's own special tokens (``[CLS] ... [SEP]``, ``<s> ... </s>``), right padding — the
  encoder input of an encoder-decoder;
- ``prompt``: ``bos`` + the text without an end token, left padding — a prompt that a causal LM continues (left
  padding keeps every prompt's last token at the same position, where generation starts).

Segments can be cut to a token budget first (the first tokens, or the last ones for ``keep_last`` segments); an
input still longer than ``max_length`` is refused with a :class:`~trustml.errors.DataError` naming the example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from trustml.data.segments_jsonl import InputTemplate
from trustml.errors import ConfigError, DataError
from trustml.models.segments import SegmentVocabulary

Layout = Literal["encoder", "prompt"]
LAYOUTS = ("encoder", "prompt")


class TemplateInputBuilder:
    """``input_ids``, ``attention_mask``, ``segment_ids`` (``[B, L]``) of examples given as ``{segment: text}``.

    ``length_hint`` is appended to the too-long message (the option that sets ``max_length``).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: InputTemplate,
        *,
        layout: Layout = "encoder",
        max_length: int = 512,
        max_segment_tokens: Mapping[str, int] | None = None,
        keep_last: Sequence[str] = (),
        bos_token_id: int | None = None,
        length_hint: str = "",
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; segment ids need token offsets")
        if layout not in LAYOUTS:
            raise ConfigError(f"input layout {layout!r} is unknown; use one of {list(LAYOUTS)}")
        if layout == "prompt" and bos_token_id is None:
            raise ConfigError("a prompt layout needs the begin-of-text token id (bos_token_id)")
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"{type(tokenizer).__name__} has no padding token; give the model one that has")
        self.tokenizer, self.template, self.layout = tokenizer, template, layout
        self.max_length = int(max_length)
        self.max_segment_tokens = dict(max_segment_tokens or {})
        self.keep_last = set(keep_last)
        self.bos_token_id = bos_token_id
        self.length_hint = length_hint
        self.vocabulary = SegmentVocabulary(template.segment_names)

    def _cut(self, name: str, texts: list[str]) -> list[str]:
        budget = self.max_segment_tokens.get(name)
        if budget is None:
            return texts
        offsets = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out = []
        for text, spans in zip(texts, offsets, strict=True):
            if len(spans) <= budget:
                out.append(text)
            elif name in self.keep_last:
                out.append(text[spans[-budget][0] :])
            else:
                out.append(text[: spans[budget - 1][1]])
        return out

    def render(self, examples: Sequence[Mapping[str, str]]) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        """Each example's text and segment character spans, after the per-segment token budgets."""
        names = self.template.segment_names
        for i, example in enumerate(examples):
            missing = [n for n in names if n not in example]
            if missing:
                raise DataError(
                    f"input {i} lacks segment(s) {missing} of the input template {self.template.template!r}"
                )
        columns = {name: self._cut(name, [str(ex[name]) for ex in examples]) for name in names}
        return [self.template.render({n: columns[n][row] for n in names}) for row in range(len(examples))]

    def _segment_of(self, offsets: list[tuple[int, int]], spans: dict[str, tuple[int, int]]) -> list[int]:
        ids = []
        for start, end in offsets:
            segment = 0
            if end > start:
                for name, (lo, hi) in spans.items():
                    if lo <= start < hi:
                        segment = self.vocabulary.id_of(name)
                        break
            ids.append(segment)
        return ids

    def __call__(self, examples: Sequence[Mapping[str, str]], names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Tokenize a batch (``names``: how to call each example in an error, e.g. its file line)."""
        rendered = self.render(examples)
        texts = [text for text, _ in rendered]
        special = self.layout == "encoder"
        enc = self.tokenizer(
            texts,
            add_special_tokens=special,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_token_type_ids=False,
        )
        rows_ids, rows_segments = [], []
        for row, (ids, offsets, specials) in enumerate(
            zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
        ):
            named = self._segment_of(offsets, rendered[row][1])
            segments = [0 if s else seg for s, seg in zip(specials, named, strict=True)]
            if self.layout == "prompt":
                ids, segments = [self.bos_token_id, *ids], [0, *segments]
            if len(ids) > self.max_length:
                who = names[row] if names is not None else f"input {row}"
                raise DataError(
                    f"{who} is {len(ids)} tokens, longer than the {self.max_length} the model reads{self.length_hint}; "
                    "shorten it or cut segments with data.max_segment_tokens"
                )
            rows_ids.append(ids)
            rows_segments.append(segments)
        return self._pad(rows_ids, rows_segments)

    def _pad(self, rows_ids: list[list[int]], rows_segments: list[list[int]]) -> dict[str, Tensor]:
        length = max(len(ids) for ids in rows_ids)
        batch = len(rows_ids)
        input_ids = torch.full((batch, length), int(self.tokenizer.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        segment_ids = torch.zeros(batch, length, dtype=torch.long)
        for row, (ids, segments) in enumerate(zip(rows_ids, rows_segments, strict=True)):
            span = slice(length - len(ids), length) if self.layout == "prompt" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
            segment_ids[row, span] = torch.tensor(segments, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "segment_ids": segment_ids}
