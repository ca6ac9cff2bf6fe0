"""Writes a generated block into experiments/federated/README.md between its begin/end markers."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).with_name("README.md")


def write_readme_block(text: str, begin: str, end: str, readme: Path = README) -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of ``readme`` with ``text``."""
    body = readme.read_text()
    start, stop = body.index(begin) + len(begin), body.index(end)
    readme.write_text(body[:start] + "\n" + text + "\n" + body[stop:])
