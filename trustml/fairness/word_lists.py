"""Word lists of embedding association tests: the shipped WEAT 1-10 and custom YAML files of the same shape.

A test has two target sets X, Y and two attribute sets A, B (Caliskan et al. 2017). A YAML file holds either
several tests under ``tests:``, or one test at its top level::

    source: where the lists come from          # optional in a custom file; a test may override it
    tests:
      my_test:
        description: what it measures           # optional
        X: {name: flowers, words: [aster, clover]}
        Y: {name: insects, words: [ant, flea]}
        A: [caress, freedom]                    # a plain list is fine too (named after its key)
        B: [abuse, crash]

Top-level keys starting with ``_`` are ignored (a place for YAML anchors of shared lists). The shipped file
``trustml/fairness/data/weat.yaml`` holds WEAT 1-10 (``weat1`` ... ``weat10``) with its ``source:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trustml.data.text_files import read_text
from trustml.errors import ConfigError

SET_KEYS = ("X", "Y", "A", "B")
_TEST_KEYS = {*SET_KEYS, "name", "description", "source"}
SHIPPED_FILE = "data/weat.yaml"


@dataclass(frozen=True)
class WordSet:
    """One named list of words (a target or attribute concept)."""

    name: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class WordTest:
    """An association test: targets ``x``, ``y`` (X, Y) and attributes ``a``, ``b`` (A, B)."""

    name: str
    x: WordSet
    y: WordSet
    a: WordSet
    b: WordSet
    source: str = ""
    description: str = ""

    @classmethod
    def from_lists(
        cls, x: list[str], y: list[str], a: list[str], b: list[str], *, name: str = "custom", source: str = ""
    ) -> WordTest:
        """A test from four plain lists (checked like a YAML file's)."""
        return _parse_test({"X": x, "Y": y, "A": a, "B": b}, name=name, source=source, where="WordTest.from_lists")

    @property
    def sets(self) -> tuple[WordSet, WordSet, WordSet, WordSet]:
        return self.x, self.y, self.a, self.b

    @property
    def words(self) -> tuple[str, ...]:
        """Every distinct word of the four sets, in order of first appearance."""
        return tuple(dict.fromkeys(word for word_set in self.sets for word in word_set.words))


def load_word_lists(path: str | Path) -> dict[str, WordTest]:
    """The tests of a word-list YAML file (see the module docstring for its shape), by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"word-list file {path} does not exist; give a YAML file with X, Y, A, B word lists")
    try:
        data = yaml.safe_load(read_text(path, "utf-8", "ceat.tests"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"word-list file {path} is not valid YAML: {exc}") from None
    return parse_word_lists(data, where=str(path), default_name=path.stem)


def parse_word_lists(data: Any, *, where: str = "word lists", default_name: str = "custom") -> dict[str, WordTest]:
    """Tests from already-parsed YAML data (a mapping); ``where`` names the source in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'tests:' or with keys X, Y, A, B at the top level")
    source = data.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{where}: 'source' must be a string")
    if "tests" in data:
        extra = sorted(str(k) for k in data if k not in {"tests", "source"} and not str(k).startswith("_"))
        if extra:
            raise ConfigError(f"{where}: unknown top-level key(s) {extra}; allowed: tests, source, _<anchors>")
        tests = data["tests"]
        if not isinstance(tests, Mapping) or not tests:
            raise ConfigError(f"{where}: 'tests' must be a non-empty mapping of test name -> X, Y, A, B")
        return {
            str(name): _parse_test(test, name=str(name), source=source, where=f"{where}: test '{name}'")
            for name, test in tests.items()
        }
    body = {k: v for k, v in data.items() if not str(k).startswith("_")}
    name = str(body.get("name", default_name))
    return {name: _parse_test(body, name=name, source=source, where=where)}


def shipped_weat_tests() -> dict[str, WordTest]:
    """WEAT 1-10 of Caliskan et al. (2017), keys ``weat1`` ... ``weat10``."""
    text = resources.files("trustml.fairness").joinpath(SHIPPED_FILE).read_text(encoding="utf-8")
    return parse_word_lists(yaml.safe_load(text), where=f"trustml/fairness/{SHIPPED_FILE}")


def resolve_word_test(spec: str | Path, test: str | None = None) -> WordTest:
    """A shipped test by name (``weat1`` ... ``weat10``) or a test of a YAML file.

    A file with one test needs no ``test``; a file with several needs ``test`` to pick one.
    """
    shipped = shipped_weat_tests()
    if isinstance(spec, str) and spec in shipped:
        return shipped[spec]
    if Path(spec).suffix.lower() not in {".yaml", ".yml"} and not Path(spec).exists():
        raise ConfigError(f"unknown word test '{spec}'; use one of {sorted(shipped, key=_natural)} or a YAML file")
    tests = load_word_lists(spec)
    if test is None:
        if len(tests) == 1:
            return next(iter(tests.values()))
        raise ConfigError(f"{spec} holds several tests {sorted(tests)}; name the one to run")
    if test not in tests:
        raise ConfigError(f"{spec} has no test '{test}'; it holds {sorted(tests)}")
    return tests[test]


def _parse_test(data: Any, *, name: str, source: str, where: str) -> WordTest:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys X, Y, A, B")
    unknown = sorted(str(k) for k in data if k not in _TEST_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a test has X, Y (targets), A, B (attributes)")
    sets = {}
    for key in SET_KEYS:
        if key not in data:
            kind = "target" if key in "XY" else "attribute"
            raise ConfigError(f"{where}: missing {kind} list '{key}'; add '{key}:' with a non-empty list of words")
        sets[key] = _parse_set(data[key], key=key, where=where)
    test_source = data.get("source", source)
    description = data.get("description", "")
    if not isinstance(test_source, str) or not isinstance(description, str):
        raise ConfigError(f"{where}: 'source' and 'description' must be strings")
    return WordTest(name, sets["X"], sets["Y"], sets["A"], sets["B"], source=test_source, description=description)


def _parse_set(data: Any, *, key: str, where: str) -> WordSet:
    name = key
    if isinstance(data, Mapping):
        extra = sorted(str(k) for k in data if k not in {"name", "words"})
        if extra or "words" not in data:
            raise ConfigError(f"{where}: '{key}' must be a list of words or {{name: ..., words: [...]}}")
        name, data = str(data.get("name", key)), data["words"]
    if not isinstance(data, list | tuple) or not data:
        raise ConfigError(f"{where}: '{key}' is empty or not a list; give at least one word")
    words = []
    for word in data:
        if not isinstance(word, str | int | float) or isinstance(word, bool) or not str(word).strip():
            raise ConfigError(f"{where}: '{key}' holds {word!r}, which is not a word (quote words like 'yes', 'no')")
        words.append(str(word).strip())
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise ConfigError(f"{where}: '{key}' lists {duplicates} more than once; keep each word once")
    return WordSet(name, tuple(words))


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    return head, int(name[len(head) :] or 0)
