"""Carrier-word tokenization."""

from __future__ import annotations

from trustml.synth.words import carrier_words, is_glued


def test_trailing_punctuation_becomes_its_own_word() -> None:
    assert carrier_words("Play some music. by, hmm?! top-fifty I'd ...", lowercase=True) == [
        "play",
        "some",
        "music",
        ".",
        "by",
        ",",
        "hmm",
        "?!",
        "top-fifty",
        "i'd",
        "...",
    ]
    assert carrier_words("Hi.") == ["Hi", "."]


def test_glued_punctuation() -> None:
    assert is_glued("?") and is_glued("...") and not is_glued("a.") and not is_glued("-")
