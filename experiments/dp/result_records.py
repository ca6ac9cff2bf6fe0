"""Committed result records of the DP experiments and the README tables built from them.

The run folders of ``run_inversion.sh`` and ``run_clipping.sh`` are not kept in git, so each summary script keeps
one JSON line per run in ``experiments/dp/results/`` and builds its README table from that file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"


def save_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` to ``path``, one JSON object per line (replacing the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of a file written by :func:`save_records` (none when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge_records(path: Path, fresh: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Add ``fresh`` records to those of ``path`` and save: a fresh record replaces a kept one with the same
    ``key`` fields, kept records of runs whose folders are gone stay (a later session has no old run folders)."""
    merged = {tuple(r[k] for k in key): r for r in load_records(path)}
    merged.update({tuple(r[k] for k in key): r for r in fresh})
    records = list(merged.values())
    save_records(path, records)
    return records


def replace_readme_block(begin: str, end: str, content: str, readme: Path = README) -> None:
    """Put ``content`` between the ``begin`` and ``end`` markers of ``readme``."""
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}")
