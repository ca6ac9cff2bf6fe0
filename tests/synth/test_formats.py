"""Importers (text, YAML, Rasa, JSONL, SNIPS) and exporters (JSONL, Rasa, SNIPS), including bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.synth.conftest import SNIPS_DIR, needs_snips
from trustml.errors import DataError
from trustml.synth.annotation import AnnotationError
from trustml.synth.formats import (
    load_utterances,
    read_snips_json,
    utterance_record,
    write_jsonl,
    write_rasa_yaml,
    write_snips_json,
)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_text_format_with_intent_headers(tmp_path: Path) -> None:
    text = "# golden\n## PlayMusic\n- play [pop](genre)\n\n## intent: GetWeather\nrain in [Paris](city)\n"
    path = _write(tmp_path / "g.txt", text)
    utts = load_utterances(path)
    assert [(u.intent, u.text) for u in utts] == [("PlayMusic", "play pop"), ("GetWeather", "rain in Paris")]


def test_text_format_errors_name_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.txt", "## PlayMusic\n  - play [pop(genre)\n")
    with pytest.raises(AnnotationError, match=rf"^{path}:2:10: unbalanced '\['"):
        load_utterances(path)
    orphan = _write(tmp_path / "o.txt", "play [pop](genre)\n")
    with pytest.raises(AnnotationError, match=rf"^{orphan}:1:1: utterance before any intent header"):
        load_utterances(orphan)


def test_yaml_mapping_and_error_position(tmp_path: Path, toy_yaml: Path) -> None:
    utts = load_utterances(toy_yaml)
    assert {u.intent for u in utts} == {"PlayMusic", "GetWeather"}
    bad = _write(tmp_path / "b.yaml", "PlayMusic:\n  - play [pop](genre)\n  - 'play [](x)'\n")
    with pytest.raises(AnnotationError, match=rf"^{bad}:3:11: empty value"):
        load_utterances(bad)
    not_list = _write(tmp_path / "n.yaml", "PlayMusic: play\n")
    with pytest.raises(DataError, match="must map to a list"):
        load_utterances(not_list)
    broken = _write(tmp_path / "x.yaml", "PlayMusic: [a\n")
    with pytest.raises(DataError, match=rf"^{broken}:2:1: invalid YAML"):
        load_utterances(broken)


def test_unknown_catalog_in_yaml_names_position(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "PlayMusic:\n  - play [pop](genre:moods)\n")
    with pytest.raises(AnnotationError, match=rf"^{path}:2:22: unknown catalog 'moods'"):
        load_utterances(path, catalogs={"genre"})
    assert load_utterances(path)[0].spans[0].catalog == "moods"  # unchecked when no catalogs are loaded


RASA = """version: "3.1"
nlu:
- intent: PlayMusic
  examples: |
    - play [pop](genre) music
    - put on [jazz]{"entity": "genre"}
- synonym: pop
  examples: |
    - pop music
- intent: GetWeather
  examples: |
    - weather in [Paris](city)

    - rain in [Paris(city)
"""


def test_rasa_yaml_import_and_error_position(tmp_path: Path) -> None:
    good = _write(tmp_path / "r.yml", RASA.replace("[Paris(city)", "[Paris](city)"))
    utts = load_utterances(good)
    assert [(u.intent, u.text, u.slot_values()) for u in utts] == [
        ("PlayMusic", "play pop music", [("genre", "pop")]),
        ("PlayMusic", "put on jazz", [("genre", "jazz")]),
        ("GetWeather", "weather in Paris", [("city", "Paris")]),
        ("GetWeather", "rain in Paris", [("city", "Paris")]),
    ]
    bad = _write(tmp_path / "bad.yml", RASA)
    with pytest.raises(AnnotationError, match=rf"^{bad}:14:15: unbalanced '\['"):
        load_utterances(bad)


def test_jsonl_annotated_and_span_records(tmp_path: Path, toy) -> None:
    path = write_jsonl(toy, tmp_path / "d.jsonl")
    assert load_utterances(path) == toy
    record = json.loads(path.read_text().splitlines()[0])
    assert record == utterance_record(toy[0])
    assert record["tags"] == ["O", "O", "B-genre", "O"]
    inline = _write(tmp_path / "i.jsonl", json.dumps({"intent": "PlayMusic", "text": "play [pop](genre)"}) + "\n")
    assert load_utterances(inline)[0].slot_values() == [("genre", "pop")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"intent": "A", "text": "play pop", "spans": [{"start": 5, "end": 8, "slot": "g", "value": "rock"}]}',
            "its value says 'rock'",
        ),
        ('{"intent": "A", "text": "play pop", "spans": [{"start": 5, "end": 99, "slot": "g"}]}', "outside the text"),
        (
            '{"intent": "A", "text": "play pop", "spans": [{"start": 0, "end": 6, "slot": "a"}, '
            '{"start": 5, "end": 8, "slot": "b"}]}',
            "overlap",
        ),
        ('{"intent": "A", "text": "play pop", "spans": [{"end": 8}]}', "integer 'start'"),
        ('{"intent": "A"}', "string fields 'intent' and 'text'"),
        ('{"intent": "A", "text": "play [pop(x)"}', "unbalanced '['"),
        ("{not json", "invalid JSON"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", '{"intent": "A", "text": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2") as info:
        load_utterances(path)
    assert message in str(info.value)


def test_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown utterance file type '.csv'"):
        load_utterances(_write(tmp_path / "g.csv", "x"))


def _snips_payload(value: str) -> dict:
    return {"PlayMusic": [{"data": [{"text": "play "}, {"text": value, "entity": "artist"}, {"text": " now "}]}]}


def test_snips_import_trims_and_locates_spans(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.json", json.dumps(_snips_payload("Madonna ")))
    (u,) = read_snips_json(path)
    assert u.text == "play Madonna  now" and u.slot_values() == [("artist", "Madonna")]


def test_snips_latin1_and_cesu8_files_decode(tmp_path: Path) -> None:
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(_snips_payload("Beyoncé"), ensure_ascii=False).encode("latin-1"))
    assert read_snips_json(latin)[0].slot_values() == [("artist", "Beyoncé")]
    cesu = tmp_path / "cesu.json"
    emoji_cesu = "\ud83c\udf55".encode("utf-8", errors="surrogatepass")  # a surrogate pair, as in the _full file
    cesu.write_bytes(json.dumps(_snips_payload("Pizza X"), ensure_ascii=False).encode().replace(b"X", emoji_cesu))
    assert read_snips_json(cesu)[0].slot_values() == [("artist", "Pizza \U0001f355")]


def test_snips_strict_encoding_and_bad_json_fail_with_the_file_name(tmp_path: Path) -> None:
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(_snips_payload("Beyoncé"), ensure_ascii=False).encode("latin-1"))
    refusal = rf"^{latin}:1: not valid utf-8 text \(byte 0xe9 at byte 61 of the line; .*set encoding=latin-1"
    with pytest.raises(DataError, match=refusal):
        read_snips_json(latin, encoding="utf-8")
    with pytest.raises(DataError, match=r"encoding='latin-9x' is not a known text encoding"):
        read_snips_json(latin, encoding="latin-9x")
    broken = _write(tmp_path / "b.json", '{"PlayMusic": [\n  {"data": ]}')
    with pytest.raises(DataError, match=rf"^{broken}:2:12: invalid JSON"):
        read_snips_json(broken)
    with pytest.raises(DataError, match="has no 'data' list"):
        read_snips_json(_write(tmp_path / "n.json", '{"PlayMusic": [{"text": "x"}]}'))
    with pytest.raises(DataError, match="does not exist"):
        read_snips_json(tmp_path / "missing.json")


LATIN1_INPUTS = {
    "text format": ("g.txt", "## PlayMusic\n- play [Beyoncé](artist)\n", 2),
    "Rasa YAML": ("r.yml", "nlu:\n- intent: PlayMusic\n  examples: |\n    - play [Beyoncé](artist)\n", 4),
    "YAML mapping": ("m.yaml", "PlayMusic:\n  - play [Beyoncé](artist)\n", 2),
    "JSONL": ("u.jsonl", '{"intent": "PlayMusic", "text": "play [Beyoncé](artist)"}\n', 1),
}


@pytest.mark.parametrize("kind", sorted(LATIN1_INPUTS))
def test_every_utterance_format_decodes_latin1_by_auto_or_names_the_line_and_option(tmp_path: Path, kind: str) -> None:
    name, text, line = LATIN1_INPUTS[kind]
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    for encoding in ("auto", "latin-1"):
        (u,) = load_utterances(path, encoding=encoding)
        assert u.intent == "PlayMusic" and u.slot_values() == [("artist", "Beyoncé")]
    with pytest.raises(DataError, match=rf"^{path}:{line}: not valid utf-8 text \(byte 0xe9 .*set encoding=latin-1"):
        load_utterances(path, encoding="utf-8")


def test_a_cesu8_file_read_strictly_is_refused_with_the_auto_fix(tmp_path: Path) -> None:
    cesu = tmp_path / "cesu.json"
    emoji_cesu = "\ud83c\udf55".encode("utf-8", errors="surrogatepass")
    cesu.write_bytes(json.dumps(_snips_payload("Pizza X"), ensure_ascii=False).encode().replace(b"X", emoji_cesu))
    with pytest.raises(DataError, match=rf"^{cesu}:1: .*ed a0 bc .*CESU-8\); set encoding=auto"):
        read_snips_json(cesu, encoding="utf-8")


def test_exporters_round_trip(tmp_path: Path, toy) -> None:
    assert load_utterances(write_rasa_yaml(toy, tmp_path / "d.yml")) == toy
    assert load_utterances(write_snips_json(toy, tmp_path / "d.json")) == toy
    assert load_utterances(write_jsonl(toy, tmp_path / "d.jsonl")) == toy


@needs_snips()
def test_real_snips_files_load() -> None:
    for path in sorted(SNIPS_DIR.glob("*.json")):
        utts = load_utterances(path)
        assert utts and all(s.end <= len(u.text) for u in utts for s in u.spans), path
    full = load_utterances(SNIPS_DIR / "train_PlayMusic_full.json")
    assert any("\U0001f355" in u.text for u in full)
    with pytest.raises(DataError, match=r"train_PlayMusic_full.json:\d+: .*CESU-8\); set encoding=auto"):
        load_utterances(SNIPS_DIR / "train_PlayMusic_full.json", encoding="utf-8")


def test_rasa_export_drops_catalog_labels(tmp_path: Path) -> None:
    from trustml.synth.annotation import parse_annotated

    u = parse_annotated("play [pop](genre:genres)", "PlayMusic")
    text = write_rasa_yaml([u], tmp_path / "r.yml").read_text()
    assert "    - play [pop](genre)\n" in text
