"""Annotated utterances: text, intent and slot spans, with the inline ``[value](slot)`` notation.

An annotated utterance is written ``play [pop](genre) music by [Madonna](artist)``: a slot value in square
brackets followed by its slot name in parentheses. ``[value](slot:catalog)`` additionally names the
catalog (slot type) whose values may fill the slot; without it the catalog defaults to the slot name.
Rasa's JSON form ``[value]{"entity": "slot"}`` is accepted as well. ``\\[`` and ``\\]`` (and ``\\(``,
``\\)``) are literal brackets.

Tokens are whitespace-separated words, split additionally at span boundaries, so every slot span covers
whole tokens and BIO tags are well defined.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from trustml.errors import DataError

_SLOT_NAME = re.compile(r"[A-Za-z_][\w.\-]*\Z")
_WORD = re.compile(r"\S+")


class AnnotationError(DataError):
    """A malformed annotation; the message names the file, line and column, the problem and the fix."""

    def __init__(self, source: str, line: int, column: int, problem: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {problem}")
        self.source = source
        self.line = line
        self.column = column


@dataclass(frozen=True)
class SlotSpan:
    """A slot value at characters ``[start, end)`` of the utterance text.

    ``catalog`` is the catalog (slot type) named explicitly by ``[value](slot:catalog)``, else ``None``.
    """

    start: int
    end: int
    slot: str
    catalog: str | None = None


@dataclass(frozen=True)
class Utterance:
    """One annotated utterance: its plain text, intent and slot spans (sorted, non-overlapping)."""

    text: str
    intent: str
    spans: tuple[SlotSpan, ...] = field(default_factory=tuple)

    def value(self, span: SlotSpan) -> str:
        """The text of ``span``."""
        return self.text[span.start : span.end]

    def slot_values(self) -> list[tuple[str, str]]:
        """``(slot, value)`` for each span, in order."""
        return [(s.slot, self.value(s)) for s in self.spans]

    def tokens(self) -> list[tuple[str, int, int]]:
        """Whitespace tokens ``(word, start, end)``, split at span boundaries as well."""
        cuts = sorted({0, len(self.text), *(b for s in self.spans for b in (s.start, s.end))})
        out: list[tuple[str, int, int]] = []
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            out.extend((m.group(), m.start(), m.end()) for m in _WORD.finditer(self.text, lo, hi))
        return out

    def bio_tags(self) -> list[str]:
        """One BIO tag per token of :meth:`tokens` (``B-slot``, ``I-slot`` or ``O``)."""
        tags = []
        for _, start, end in self.tokens():
            span = next((s for s in self.spans if s.start <= start and end <= s.end), None)
            if span is None:
                tags.append("O")
            else:
                tags.append(("B-" if start == span.start else "I-") + span.slot)
        return tags

    def annotated(self, with_catalog: bool = True) -> str:
        """The inline notation of this utterance (inverse of :func:`parse_annotated`); ``with_catalog=False``
        leaves out the ``:catalog`` part (for tools such as Rasa that do not know it)."""
        parts, pos = [], 0
        for s in self.spans:
            parts.append(_escape(self.text[pos : s.start]))
            label = s.slot if s.catalog is None or not with_catalog else f"{s.slot}:{s.catalog}"
            parts.append(f"[{_escape(self.value(s))}]({label})")
            pos = s.end
        parts.append(_escape(self.text[pos:]))
        return "".join(parts)

    def pattern(self) -> tuple[str, ...]:
        """The semantic pattern: slot names in order, with each run of carrier words abstracted to ``other``."""
        out: list[str] = []
        pos = 0
        for s in self.spans:
            if self.text[pos : s.start].strip():
                out.append("other")
            out.append(s.slot)
            pos = s.end
        if self.text[pos:].strip():
            out.append("other")
        return tuple(out)


def _escape(text: str) -> str:
    return re.sub(r"([\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class Location:
    """Where an annotated string starts in its file: 1-based line and column (for error messages)."""

    source: str = "<string>"
    line: int = 1
    column: int = 1

    def error(self, offset: int, problem: str) -> AnnotationError:
        """An :class:`AnnotationError` at character ``offset`` of the annotated string."""
        return AnnotationError(self.source, self.line, self.column + offset, problem)


def parse_annotated(
    annotated: str,
    intent: str,
    *,
    where: Location | None = None,
    catalogs: Collection[str] | None = None,
) -> Utterance:
    """Parse ``play [pop](genre) music`` into an :class:`Utterance` of ``intent``.

    Raises :class:`AnnotationError` (file, line, column) for an unbalanced bracket, an empty or invalid
    slot name, an empty value, nested spans, and, when ``catalogs`` is given, a ``[value](slot:catalog)``
    that names a catalog not in ``catalogs``.
    """
    where = where or Location()
    text: list[str] = []
    spans: list[SlotSpan] = []
    i, n = 0, len(annotated)
    open_at: int | None = None
    value_start = 0
    while i < n:
        ch = annotated[i]
        if ch == "\\" and i + 1 < n and annotated[i + 1] in "[]()\\":
            text.append(annotated[i + 1])
            i += 2
            continue
        if ch == "[":
            if open_at is not None:
                raise where.error(
                    i,
                    f"nested '[' inside the slot value opened at column {where.column + open_at}; "
                    "close the first value with ']' (write '\\[' for a literal bracket)",
                )
            open_at, value_start = i, len("".join(text))
            i += 1
            continue
        if ch == "]":
            if open_at is None:
                raise where.error(i, "unbalanced ']' without an opening '['; remove it or write '\\]'")
            i, slot, catalog = _parse_label(annotated, i + 1, where, catalogs)
            plain = "".join(text)
            raw_value = plain[value_start:]
            lo = value_start + len(raw_value) - len(raw_value.lstrip())
            hi = value_start + len(raw_value.rstrip())
            if lo >= hi:
                raise where.error(open_at, f"empty value for slot '{slot}'; put the slot's words inside '[...]'")
            spans.append(SlotSpan(lo, hi, slot, catalog))
            open_at = None
            continue
        text.append(ch)
        i += 1
    if open_at is not None:
        raise where.error(open_at, "unbalanced '[': the slot value is never closed; add ']' and '(slot)'")
    plain = "".join(text)
    stripped = plain.strip()
    shift = len(plain) - len(plain.lstrip())
    if not stripped:
        raise where.error(0, "empty utterance; remove the line or write the utterance")
    spans = [SlotSpan(s.start - shift, s.end - shift, s.slot, s.catalog) for s in spans]
    return Utterance(stripped, intent, tuple(spans))


def _parse_label(
    annotated: str, i: int, where: Location, catalogs: Collection[str] | None
) -> tuple[int, str, str | None]:
    """Parse ``(slot)``, ``(slot:catalog)`` or ``{"entity": ...}`` at ``i``; return (next index, slot, catalog)."""
    if i < len(annotated) and annotated[i] == "{":
        close = annotated.find("}", i)
        if close < 0:
            raise where.error(i, "unbalanced '{' after ']': close the entity object with '}'")
        try:
            obj = json.loads(annotated[i : close + 1])
        except json.JSONDecodeError as exc:
            raise where.error(i, f'invalid entity object after \']\': {exc.msg}; write {{"entity": "slot"}}') from exc
        entity = obj.get("entity", "") if isinstance(obj, dict) else ""
        _check_slot_name(str(entity), where, i)
        return close + 1, str(entity), None
    if i >= len(annotated) or annotated[i] != "(":
        raise where.error(i, "expected '(slot)' right after ']'; write [value](slot)")
    close = annotated.find(")", i)
    if close < 0:
        raise where.error(i, "unbalanced '(': the slot name is never closed; add ')'")
    label = annotated[i + 1 : close]
    slot, _, catalog = label.partition(":")
    _check_slot_name(slot, where, i + 1)
    if ":" in label:
        _check_slot_name(catalog, where, i + 2 + len(slot), what="catalog name")
        if catalogs is not None and catalog not in catalogs:
            known = ", ".join(sorted(catalogs)) or "none loaded"
            raise where.error(
                i + 2 + len(slot), f"unknown catalog '{catalog}' (known: {known}); add a catalog file or fix the name"
            )
    return close + 1, slot, catalog or None


def _check_slot_name(name: str, where: Location, offset: int, what: str = "slot name") -> None:
    if not name.strip():
        raise where.error(offset, f"empty {what}; write [value](slot)")
    if not _SLOT_NAME.match(name):
        raise where.error(offset, f"invalid {what} '{name}'; use letters, digits, '_', '.', '-'")
