"""Carrier-word tokenization: whitespace words with trailing punctuation split off as words of their own."""

from __future__ import annotations

import re

_TRAILING_PUNCT = re.compile(r"^(.*?[^.,?!;:])?([.,?!;:]+)$")
_GLUE = re.compile(r"[.,?!;:]+")


def carrier_words(text: str, lowercase: bool = False) -> list[str]:
    """The words of ``text`` (whitespace-separated), each trailing ``.,?!;:`` run as a word of its own."""
    out: list[str] = []
    for word in text.split():
        m = _TRAILING_PUNCT.match(word)
        if m and m.group(1):
            out += [m.group(1), m.group(2)]
        else:
            out.append(word)
    return [w.lower() for w in out] if lowercase else out


def is_glued(word: str) -> bool:
    """Whether ``word`` is punctuation written without a space before it."""
    return _GLUE.fullmatch(word) is not None
