"""Catalog files and how catalogs extend slot classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustml.errors import ConfigError, DataError
from trustml.synth.annotation import parse_annotated
from trustml.synth.catalog import explicit_catalogs, extend_slot_classes, load_catalogs, read_catalog
from trustml.synth.induction import induce_grammar


def test_catalog_file_skips_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "genre.txt"
    path.write_text("# music genres\npop\n\n  rock  \npop\n", encoding="utf-8")
    assert read_catalog(path) == ("pop", "rock")
    assert load_catalogs(tmp_path) == {"genre": ("pop", "rock")}
    assert load_catalogs({"g": path}) == {"g": ("pop", "rock")}
    assert load_catalogs(None) == {}


def test_bad_catalogs_fail_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt has no values"):
        read_catalog(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_catalogs(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"has no \*\.txt files"):
        load_catalogs(tmp_path / "sub")


def test_catalogs_extend_overlapping_or_named_slot_classes(toy) -> None:
    toy = [*toy, parse_annotated("weather at [dawn](timeRange:daytimes)", "GetWeather")]
    grammar, _ = induce_grammar(toy)
    catalogs = {"genres": ("Pop", "blues", "metal"), "cities": ("Oslo",), "daytimes": ("dusk",)}
    extend_slot_classes(grammar, catalogs, weight=0.5, explicit=explicit_catalogs(toy))
    music, weather = grammar.intents["PlayMusic"], grammar.intents["GetWeather"]
    assert music.slot_values["genre"] == {"pop": 2, "rock": 2, "jazz": 3, "blues": 0.5, "metal": 0.5}
    assert music.catalog_extensions == {"genre": ["genres"]}
    assert "Oslo" not in weather.slot_values["city"]  # no golden city is in the catalog
    assert weather.slot_values["timeRange"]["dusk"] == 0.5
    assert "{genre} = jazz | pop | rock | blues | metal  # + catalog genres" in grammar.render()


def test_name_matching_ignores_catalogs_that_only_share_a_value(toy) -> None:
    grammar, _ = induce_grammar(toy)
    catalogs = {"city": ("Oslo", "Paris"), "artist": ("Paris", "Adele"), "genre": ("blues",)}
    extend_slot_classes(grammar, catalogs, match="name")
    weather, music = grammar.intents["GetWeather"], grammar.intents["PlayMusic"]
    assert weather.catalog_extensions == {"city": ["city"]}
    assert "Oslo" in weather.slot_values["city"] and "Adele" not in weather.slot_values["city"]
    assert music.catalog_extensions == {"artist": ["artist"], "genre": ["genre"]}
    grammar, _ = induce_grammar(toy)
    extend_slot_classes(grammar, catalogs, match="values")
    assert grammar.intents["GetWeather"].catalog_extensions == {"city": ["artist", "city"]}
    with pytest.raises(ConfigError, match="catalog_match must be one of values, name, got 'fuzzy'"):
        extend_slot_classes(grammar, catalogs, match="fuzzy")


def test_json_and_yaml_catalogs_mappings_and_max_values(tmp_path: Path) -> None:
    folder = tmp_path / "cats"
    folder.mkdir()
    (folder / "genre.txt").write_text("pop\nrock\njazz\n", encoding="utf-8")
    (folder / "city.json").write_text('["Paris", "Rome", "Paris", 1984]', encoding="utf-8")
    (folder / "artist.yaml").write_text("- Madonna\n- Miles Davis\n", encoding="utf-8")
    (folder / "notes.md").write_text("not a catalog\n", encoding="utf-8")
    assert load_catalogs(folder) == {
        "artist": ("Madonna", "Miles Davis"),
        "city": ("Paris", "Rome", "1984"),
        "genre": ("pop", "rock", "jazz"),
    }
    assert load_catalogs(folder, max_values=2) == {
        "artist": ("Madonna", "Miles Davis"),
        "city": ("Paris", "Rome"),
        "genre": ("pop", "rock"),
    }
    mapping = tmp_path / "catalogs.yaml"
    mapping.write_text("genre: [pop, rock, jazz]\ncity:\n  - Oslo\n", encoding="utf-8")
    assert load_catalogs(mapping, max_values=1) == {"genre": ("pop",), "city": ("Oslo",)}
    from trustml.synth.catalog import catalog_sizes

    assert catalog_sizes(load_catalogs(folder)) == {"artist": 2, "city": 3, "genre": 3}


def test_bad_structured_catalogs_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "city.json").write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"city\.json must hold a list of values"):
        read_catalog(tmp_path / "city.json")
    (tmp_path / "bad.yaml").write_text("- [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot parse catalog file .*bad\.yaml"):
        read_catalog(tmp_path / "bad.yaml")
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "genre.txt").write_text("pop\n", encoding="utf-8")
    (folder / "genre.yaml").write_text("- rock\n", encoding="utf-8")
    with pytest.raises(DataError, match="two files for slot type 'genre'"):
        load_catalogs(folder)
    with pytest.raises(ConfigError, match="catalog_max_values must be >= 1"):
        load_catalogs(folder, max_values=0)
    mapping = tmp_path / "map.json"
    mapping.write_text('{"genre": "pop"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"map\.json \(type 'genre'\) must hold a list"):
        load_catalogs(mapping)


def test_cli_reports_catalog_sizes_and_cuts_them(tmp_path: Path, toy_yaml: Path) -> None:
    from tests.synth.test_cli import _cfg
    from trustml.cli.synth import run

    folder = tmp_path / "cats"
    folder.mkdir()
    (folder / "genre.json").write_text('["pop", "blues", "soul", "funk"]', encoding="utf-8")
    report = run(_cfg(f"golden={toy_yaml}", f"catalogs={folder}", "catalog_max_values=2"), tmp_path / "out")
    assert report["catalogs"] == {"genre": 2} and report["catalog_max_values"] == 2
    assert report["catalog_extensions"]["PlayMusic"] == {"genre": ["genre"]}
    text = (tmp_path / "out" / "grammar.txt").read_text()
    assert "blues" in text and "soul" not in text
