"""Importers and exporters of annotated utterances.

Inputs (by file suffix, see :func:`load_utterances`):

- ``.txt``/``.md``: ``## IntentName`` header lines, then one annotated utterance per line (an optional
  leading ``- `` is dropped; ``#`` lines are comments).
- ``.yaml``/``.yml``: either a mapping ``IntentName: [annotated utterance, ...]`` or Rasa NLU YAML
  (``nlu: [{intent: ..., examples: "- ...\\n- ..."}]``).
- ``.jsonl``: one object per line with ``intent`` and either ``text`` in the inline notation or plain
  ``text`` with ``spans`` (``start``, ``end``, ``slot``), as written by :func:`write_jsonl`.
- ``.json``: the SNIPS format ``{"Intent": [{"data": [{"text": ..., "entity": ...}, ...]}, ...]}``.

Outputs: JSONL (text, intent, spans, tokens, BIO tags), Rasa YAML, SNIPS JSON.

Every reader takes ``encoding`` (``trustml-synth encoding=...``), decoded by
:func:`trustml.data.text_files.read_text`: ``auto`` (the default) detects UTF-8, then CESU-8 (the emoji of the
SNIPS ``train_PlayMusic_full.json``), then falls back to Latin-1 with a logged warning, so the SNIPS ``_full``
files load as they are; a codec name (``utf-8``, ``latin-1``, ...) is used strictly and a file that does not
decode is refused with its line and the option to set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml

from trustml.data.text_files import read_text as _read_file
from trustml.errors import DataError
from trustml.synth.annotation import AnnotationError, Location, SlotSpan, Utterance, parse_annotated

#: The ``trustml-synth`` option that chooses how input files are decoded (named in decoding errors).
ENCODING_OPTION = "encoding"

_INTENT_HEADER = re.compile(r"##\s*(?:intent\s*:\s*)?(?P<intent>\S.*?)\s*$")


def read_text(path: str | Path, encoding: str = "auto") -> str:
    """The text of an utterance file decoded by ``encoding`` (errors name the file, line and ``encoding``)."""
    return _read_file(path, encoding, ENCODING_OPTION)


def load_utterances(
    path: str | Path, *, catalogs: Collection[str] | None = None, encoding: str = "auto"
) -> list[Utterance]:
    """Read annotated utterances from ``path``, choosing the format by its suffix (see the module doc).

    ``catalogs`` (names of the loaded catalogs) makes ``[value](slot:catalog)`` with an unknown catalog an
    error. Raises :class:`~trustml.errors.DataError` naming the file (and line, column) on bad input.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {
        ".txt": read_text_format,
        ".md": read_text_format,
        ".yaml": read_yaml,
        ".yml": read_yaml,
        ".jsonl": read_jsonl,
    }
    if suffix == ".json":
        return read_snips_json(path, encoding=encoding)
    if suffix not in readers:
        raise DataError(f"{path}: unknown utterance file type '{suffix}'; use .txt, .yaml, .jsonl or SNIPS .json")
    return readers[suffix](path, catalogs=catalogs, encoding=encoding)


def read_text_format(
    path: str | Path, *, catalogs: Collection[str] | None = None, encoding: str = "auto"
) -> list[Utterance]:
    """Utterances from the text format: ``## Intent`` headers, one annotated utterance per line."""
    intent: str | None = None
    out: list[Utterance] = []
    for number, line in enumerate(read_text(path, encoding).splitlines(), start=1):
        stripped = line.strip()
        header = _INTENT_HEADER.match(stripped)
        if header:
            intent = header.group("intent")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        column = len(line) - len(line.lstrip()) + 1
        if stripped.startswith("- "):
            stripped, column = stripped[2:], column + 2
        if intent is None:
            raise AnnotationError(
                str(path), number, column, "utterance before any intent header; add a line '## IntentName' above it"
            )
        out.append(parse_annotated(stripped, intent, where=Location(str(path), number, column), catalogs=catalogs))
    return out


def read_yaml(path: str | Path, *, catalogs: Collection[str] | None = None, encoding: str = "auto") -> list[Utterance]:
    """Utterances from YAML: ``{Intent: [annotated, ...]}`` or Rasa NLU (``nlu: [{intent, examples}]``)."""
    text = read_text(path, encoding)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DataError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from exc
    if not isinstance(root, yaml.MappingNode):
        raise DataError(f"{path}: expected a mapping of intent -> utterances (or Rasa 'nlu:'), got {_kind(root)}")
    keys = {k.value: v for k, v in root.value}
    if "nlu" in keys:
        return _read_rasa_nodes(path, keys["nlu"], text.splitlines(), catalogs)
    out: list[Utterance] = []
    for key, items in root.value:
        if not isinstance(items, yaml.SequenceNode):
            raise DataError(
                f"{path}:{items.start_mark.line + 1}: intent '{key.value}' must map to a list of annotated utterances"
            )
        for item in items.value:
            if not isinstance(item, yaml.ScalarNode):
                raise DataError(f"{path}:{item.start_mark.line + 1}: expected an annotated utterance string")
            quoted = 1 if item.style in ("'", '"') else 0
            where = Location(str(path), item.start_mark.line + 1, item.start_mark.column + 1 + quoted)
            out.append(parse_annotated(item.value, key.value, where=where, catalogs=catalogs))
    return out


def _kind(node: yaml.Node | None) -> str:
    return "nothing" if node is None else type(node).__name__.replace("Node", "").lower()


def _read_rasa_nodes(
    path: str | Path, nlu: yaml.Node, lines: list[str], catalogs: Collection[str] | None
) -> list[Utterance]:
    if not isinstance(nlu, yaml.SequenceNode):
        raise DataError(f"{path}:{nlu.start_mark.line + 1}: 'nlu' must be a list of {{intent, examples}} items")
    out: list[Utterance] = []
    for item in nlu.value:
        fields = {k.value: v for k, v in item.value} if isinstance(item, yaml.MappingNode) else {}
        if "intent" not in fields:
            continue  # synonyms, regexes and lookup tables carry no utterances
        examples = fields.get("examples")
        if not isinstance(examples, yaml.ScalarNode):
            raise DataError(
                f"{path}:{item.start_mark.line + 1}: intent '{fields['intent'].value}' needs an "
                "'examples: |' block of '- utterance' lines"
            )
        first = examples.start_mark.line + (1 if examples.style == "|" else 0)
        for offset, example in enumerate(examples.value.split("\n")):
            body = example.strip()
            if not body:
                continue
            if not body.startswith("- "):
                raise DataError(f"{path}:{first + offset + 1}: Rasa examples are '- utterance' lines; add '- '")
            body = body[2:].strip()
            raw = lines[first + offset] if first + offset < len(lines) else ""
            column = raw.find(body) + 1 if body in raw else 1
            where = Location(str(path), first + offset + 1, column)
            out.append(parse_annotated(body, fields["intent"].value, where=where, catalogs=catalogs))
    return out


def read_jsonl(path: str | Path, *, catalogs: Collection[str] | None = None, encoding: str = "auto") -> list[Utterance]:
    """Utterances from JSONL: ``{"intent", "text"}`` in inline notation, or plain ``text`` with ``spans``."""
    out: list[Utterance] = []
    for number, line in enumerate(read_text(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}:{exc.colno}: invalid JSON ({exc.msg}); one object per line") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("intent"), str) or not isinstance(obj.get("text"), str):
            raise DataError(f"{path}:{number}: expected an object with string fields 'intent' and 'text'")
        if "spans" in obj:
            out.append(_utterance_from_spans(obj, path, number))
        else:
            column = line.find('"text"') + 1
            out.append(
                parse_annotated(
                    obj["text"], obj["intent"], where=Location(str(path), number, max(column, 1)), catalogs=catalogs
                )
            )
    return out


def _utterance_from_spans(obj: dict[str, Any], path: str | Path, number: int) -> Utterance:
    text: str = obj["text"]
    spans = []
    for span in obj["spans"]:
        try:
            start, end, slot = int(span["start"]), int(span["end"]), str(span["slot"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{number}: each span needs integer 'start', 'end' and a 'slot'") from exc
        if not 0 <= start < end <= len(text) or not slot:
            raise DataError(f"{path}:{number}: span {start}..{end} ('{slot}') lies outside the text or is empty")
        if "value" in span and text[start:end] != span["value"]:
            raise DataError(
                f"{path}:{number}: span {start}..{end} is '{text[start:end]}' but its value says "
                f"'{span['value']}'; fix the offsets"
            )
        spans.append(SlotSpan(start, end, slot, span.get("catalog")))
    spans.sort(key=lambda s: s.start)
    for a, b in zip(spans, spans[1:], strict=False):
        if b.start < a.end:
            raise DataError(f"{path}:{number}: spans '{a.slot}' and '{b.slot}' overlap; slot spans must be disjoint")
    return Utterance(text, obj["intent"], tuple(spans))


def read_snips_json(path: str | Path, *, encoding: str = "auto") -> list[Utterance]:
    """Utterances from a SNIPS NLU benchmark file ``{"Intent": [{"data": [{"text", "entity"?}, ...]}]}``."""
    try:
        obj = json.loads(read_text(path, encoding))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise DataError(f'{path}: expected the SNIPS format {{"Intent": [{{"data": [...]}}]}}')
    out: list[Utterance] = []
    for intent, items in obj.items():
        for k, item in enumerate(items):
            chunks = item.get("data") if isinstance(item, dict) else None
            if not isinstance(chunks, list):
                raise DataError(f"{path}: utterance {k} of intent '{intent}' has no 'data' list of chunks")
            out.append(_utterance_from_chunks(chunks, intent))
    return out


def _utterance_from_chunks(chunks: list[dict[str, str]], intent: str) -> Utterance:
    text, spans = "", []
    for chunk in chunks:
        piece = chunk["text"]
        if chunk.get("entity"):
            lead = len(piece) - len(piece.lstrip())
            core = piece.strip()
            if core:
                spans.append(SlotSpan(len(text) + lead, len(text) + lead + len(core), chunk["entity"]))
        text += piece
    shift = len(text) - len(text.lstrip())
    spans = [SlotSpan(s.start - shift, s.end - shift, s.slot) for s in spans]
    return Utterance(text.strip(), intent, tuple(spans))


def utterance_record(utterance: Utterance) -> dict[str, Any]:
    """The JSONL record of an utterance: text, intent, spans (with values), tokens and BIO tags."""
    return {
        "text": utterance.text,
        "intent": utterance.intent,
        "spans": [
            {"start": s.start, "end": s.end, "slot": s.slot, "value": utterance.value(s)} for s in utterance.spans
        ],
        "tokens": [t for t, _, _ in utterance.tokens()],
        "tags": utterance.bio_tags(),
    }


def write_jsonl(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write one :func:`utterance_record` per line to ``path``."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(utterance_record(u), ensure_ascii=False) + "\n")
    return path


def _by_intent(utterances: Iterable[Utterance]) -> dict[str, list[Utterance]]:
    grouped: dict[str, list[Utterance]] = {}
    for u in utterances:
        grouped.setdefault(u.intent, []).append(u)
    return grouped


def write_rasa_yaml(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write Rasa NLU YAML (``version: "3.1"``, one ``intent`` item per intent, inline annotations)."""
    path = Path(path)
    lines = ['version: "3.1"', "nlu:"]
    for intent, items in _by_intent(utterances).items():
        lines += [f"- intent: {intent}", "  examples: |"]
        lines += [f"    - {u.annotated(with_catalog=False)}" for u in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_snips_json(utterances: Iterable[Utterance], path: str | Path) -> Path:
    """Write the SNIPS format: ``{"Intent": [{"data": [{"text": ...}, {"text": ..., "entity": ...}]}]}``."""
    path = Path(path)
    out = {}
    for intent, items in _by_intent(utterances).items():
        out[intent] = [{"data": _chunks(u)} for u in items]
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def _chunks(u: Utterance) -> list[dict[str, str]]:
    chunks, pos = [], 0
    for s in u.spans:
        if s.start > pos:
            chunks.append({"text": u.text[pos : s.start]})
        chunks.append({"text": u.value(s), "entity": s.slot})
        pos = s.end
    if pos < len(u.text):
        chunks.append({"text": u.text[pos:]})
    return chunks
