"""Catalogs: lists of slot values per slot type and how they extend the slot classes of a grammar.

A catalog file is ``<type>.txt`` (one value per line, ``#`` comments), or ``<type>.json`` / ``<type>.yaml``
(``.yml``) holding a list of values; a catalog source is a folder of such files, one JSON/YAML file mapping
each type to its list, or a mapping ``type -> file``. ``max_values`` keeps the first values of each catalog
(in file order), so a large gazetteer can be cut to a size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from trustml.data.text_files import AUTO, read_text
from trustml.errors import ConfigError, DataError
from trustml.synth.annotation import Utterance
from trustml.synth.grammar import Grammar

Catalogs = dict[str, tuple[str, ...]]
CATALOG_MATCHES = ("values", "name")


CATALOG_SUFFIXES = (".txt", ".json", ".yaml", ".yml")


def _values(items: object, path: Path, where: str = "") -> tuple[str, ...]:
    """The distinct non-empty values of a JSON/YAML list (numbers become text); a :class:`DataError` otherwise."""
    if not isinstance(items, list) or not all(isinstance(v, str | int | float) for v in items):
        raise DataError(f'catalog file {path}{where} must hold a list of values (strings), e.g. ["pop", "rock"]')
    values = dict.fromkeys(str(v).strip() for v in items)
    values.pop("", None)
    if not values:
        raise DataError(f"catalog file {path}{where} has no values")
    return tuple(values)


def _parse(path: Path) -> object:
    text = read_text(path, AUTO, option="encoding")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot parse catalog file {path}: {exc}") from exc


def read_catalog(path: str | Path, max_values: int | None = None) -> tuple[str, ...]:
    """The values in a catalog file (``.txt``: one per line, blank lines and ``#`` comments skipped; ``.json`` /
    ``.yaml`` / ``.yml``: a list), duplicates dropped, the first ``max_values`` kept (all when None)."""
    path = Path(path)
    if path.suffix in (".json", ".yaml", ".yml"):
        values = _values(_parse(path), path)
    else:
        lines: dict[str, None] = {}
        for line in read_text(path, AUTO, option="encoding").splitlines():
            value = line.strip()
            if value and not value.startswith("#"):
                lines.setdefault(value, None)
        if not lines:
            raise DataError(f"catalog file {path} has no values; write one slot value per line")
        values = tuple(lines)
    return values[:max_values] if max_values is not None else values


def load_catalogs(source: str | Path | Mapping[str, str | Path] | None, max_values: int | None = None) -> Catalogs:
    """Catalogs from a folder (``<type>.txt|json|yaml|yml`` per slot type), one JSON/YAML file mapping types to
    lists, or a mapping ``type -> file``; ``None``: none. Each keeps its first ``max_values`` values."""
    if max_values is not None and max_values < 1:
        raise ConfigError(f"catalog_max_values must be >= 1 (or null for all values), got {max_values}")
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {str(name): read_catalog(path, max_values) for name, path in source.items()}
    folder = Path(source)
    if folder.is_file() and folder.suffix in (".json", ".yaml", ".yml"):
        mapping = _parse(folder)
        if not isinstance(mapping, dict) or not mapping:
            raise DataError(f"catalog file {folder} must map each slot type to a list of values, e.g. genre: [pop]")
        return {str(k): _values(v, folder, f" (type '{k}')")[:max_values] for k, v in mapping.items()}
    if not folder.is_dir():
        raise DataError(
            f"catalog directory {folder} does not exist; give a folder of <slot_type>.txt files "
            "(or .json/.yaml lists) or one .json/.yaml file mapping slot types to lists"
        )
    files = sorted(f for f in folder.iterdir() if f.suffix in CATALOG_SUFFIXES)
    if not files:
        raise DataError(f"catalog directory {folder} has no *.txt files; add one <slot_type>.txt per slot type")
    out: Catalogs = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"catalog directory {folder} has two files for slot type '{f.stem}'; keep one")
        out[f.stem] = read_catalog(f, max_values)
    return out


def catalog_sizes(catalogs: Catalogs) -> dict[str, int]:
    """The number of values of each catalog."""
    return {name: len(values) for name, values in sorted(catalogs.items())}


def explicit_catalogs(utterances: Iterable[Utterance]) -> dict[tuple[str, str], set[str]]:
    """``(intent, slot) -> catalogs`` named by ``[value](slot:catalog)`` annotations."""
    out: dict[tuple[str, str], set[str]] = {}
    for u in utterances:
        for span in u.spans:
            if span.catalog is not None:
                out.setdefault((u.intent, span.slot), set()).add(span.catalog)
    return out


def extend_slot_classes(
    grammar: Grammar,
    catalogs: Catalogs,
    weight: float = 1.0,
    explicit: Mapping[tuple[str, str], set[str]] | None = None,
    match: str = "values",
) -> Grammar:
    """Add catalog values to slot classes (in place; returns ``grammar``).

    With ``match="values"`` a slot's class takes all values of catalog ``C`` when one of its golden values
    is in ``C`` (case-insensitive), when ``C`` is named like the slot, or when an annotation named ``C`` for
    it; with ``match="name"`` only in the last two cases (no extension by a shared value, so a ``city``
    class never takes a ``state`` catalog that happens to list one of its values). Added values get
    pseudo-count ``weight`` (golden values keep their counts). ``catalog_extensions`` records which
    catalogs extended which slot.
    """
    if match not in CATALOG_MATCHES:
        raise ConfigError(f"catalog_match must be one of {', '.join(CATALOG_MATCHES)}, got '{match}'")
    explicit = explicit or {}
    folded = {name: {v.casefold() for v in values} for name, values in catalogs.items()}
    for intent, g in grammar.intents.items():
        for slot, values in g.slot_values.items():
            golden = {v.casefold() for v in values}
            for name, catalog in sorted(catalogs.items()):
                named = name == slot or name in explicit.get((intent, slot), set())
                if named or (match == "values" and golden & folded[name]):
                    present = {v.casefold() for v in values}
                    for v in catalog:
                        if v.casefold() not in present:
                            values[v] = weight
                            present.add(v.casefold())
                    g.catalog_extensions.setdefault(slot, []).append(name)
    return grammar
