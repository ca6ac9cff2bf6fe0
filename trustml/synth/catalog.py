"""Catalogs: lists of slot values per slot type (one value per line in ``<type>.txt``) and how they extend
the slot classes of a grammar."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from trustml.data.text_files import AUTO, read_text
from trustml.errors import ConfigError, DataError
from trustml.synth.annotation import Utterance
from trustml.synth.grammar import Grammar

Catalogs = dict[str, tuple[str, ...]]
CATALOG_MATCHES = ("values", "name")


def read_catalog(path: str | Path) -> tuple[str, ...]:
    """The values in a catalog file: one per line, blank lines and ``#`` comments skipped, duplicates dropped."""
    path = Path(path)
    values: dict[str, None] = {}
    for line in read_text(path, AUTO, option="encoding").splitlines():
        value = line.strip()
        if value and not value.startswith("#"):
            values.setdefault(value, None)
    if not values:
        raise DataError(f"catalog file {path} has no values; write one slot value per line")
    return tuple(values)


def load_catalogs(source: str | Path | Mapping[str, str | Path] | None) -> Catalogs:
    """Catalogs from a directory (``<name>.txt`` per slot type) or a mapping ``name -> file``; ``None``: none."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return {str(name): read_catalog(path) for name, path in source.items()}
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"catalog directory {folder} does not exist; give a folder of <slot_type>.txt files")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"catalog directory {folder} has no *.txt files; add one <slot_type>.txt per slot type")
    return {f.stem: read_catalog(f) for f in files}


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
