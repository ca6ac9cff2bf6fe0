"""The inline annotation notation: parsing, tokens, BIO tags, patterns and every malformed case."""

from __future__ import annotations

import pytest

from trustml.synth.annotation import AnnotationError, Location, SlotSpan, Utterance, parse_annotated


def test_parse_spans_tokens_and_bio_tags() -> None:
    u = parse_annotated("play [pop](genre) music by [Madonna Louise](artist)", "PlayMusic")
    assert u.text == "play pop music by Madonna Louise"
    assert u.slot_values() == [("genre", "pop"), ("artist", "Madonna Louise")]
    assert [t for t, _, _ in u.tokens()] == ["play", "pop", "music", "by", "Madonna", "Louise"]
    assert u.bio_tags() == ["O", "B-genre", "O", "O", "B-artist", "I-artist"]
    assert u.pattern() == ("other", "genre", "other", "artist")


def test_tokens_split_at_span_boundaries() -> None:
    u = Utterance("play Madonna's hits", "PlayMusic", (SlotSpan(5, 12, "artist"),))
    assert [t for t, _, _ in u.tokens()] == ["play", "Madonna", "'s", "hits"]
    assert u.bio_tags() == ["O", "B-artist", "O", "O"]


def test_catalog_label_rasa_entity_form_and_escapes_round_trip() -> None:
    u = parse_annotated(
        r'put on [jazz]{"entity": "genre"} by [Prince](artist:artists) \[live\]', "PlayMusic", catalogs={"artists"}
    )
    assert u.spans == (SlotSpan(7, 11, "genre"), SlotSpan(15, 21, "artist", "artists"))
    assert u.text.endswith("[live]")
    assert parse_annotated(u.annotated(), "PlayMusic") == u


def test_value_whitespace_is_trimmed_from_the_span() -> None:
    u = parse_annotated("play [ pop ](genre)", "PlayMusic")
    assert u.value(u.spans[0]) == "pop"


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("play [pop(genre) music", 6, "unbalanced '['"),
        ("play pop](genre) music", 9, "unbalanced ']'"),
        ("play [pop](genre music", 11, "unbalanced '('"),
        ("play [pop] music", 11, "expected '(slot)'"),
        ("play [pop]() music", 12, "empty slot name"),
        ("play [pop]( ) music", 12, "empty slot name"),
        ("play [pop](gen re) music", 12, "invalid slot name"),
        ("play [](genre) music", 6, "empty value"),
        ("play [a [b](c)](d)", 9, "nested '['"),
        ("play [pop](genre:moods) music", 18, "unknown catalog 'moods'"),
        ("play [pop](genre:) music", 18, "empty catalog name"),
        ('play [pop]{"entity": 1 music', 11, "unbalanced '{'"),
        ("   ", 1, "empty utterance"),
    ],
)
def test_malformed_annotations_name_file_line_and_column(text: str, column: int, message: str) -> None:
    with pytest.raises(AnnotationError) as info:
        parse_annotated(text, "X", where=Location("golden.txt", 7, 1), catalogs={"genres"})
    err = info.value
    assert (err.source, err.line, err.column) == ("golden.txt", 7, column)
    assert str(err).startswith(f"golden.txt:7:{column}: ")
    assert message in str(err)


def test_location_column_offsets_the_error() -> None:
    with pytest.raises(AnnotationError, match=r"^f\.yaml:3:10: unbalanced '\['"):
        parse_annotated("a [b", "X", where=Location("f.yaml", 3, 8))
