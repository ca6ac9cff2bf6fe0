"""The grammar model: probabilities, counts, statistics, rendering and JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustml.errors import DataError
from trustml.synth.grammar import Grammar, IntentGrammar, Nonterminal, SlotRef

S, Q, M = Nonterminal("S"), Nonterminal("q"), Nonterminal("m")


def seed_grammar() -> Grammar:
    """The toy grammar ``play (some | more)? {genre} music``."""
    rules = {
        S: {("play", Q, SlotRef("genre"), M): 3, ("play", SlotRef("genre"), M): 1},
        Q: {("some",): 2, ("more",): 2},
        M: {("music",): 4},
    }
    return Grammar({"PlayMusic": IntentGrammar("PlayMusic", S, rules, {"genre": {"pop": 3.0, "rock": 1.0}})})


def test_probabilities_counts_and_stats() -> None:
    g = seed_grammar().intents["PlayMusic"]
    assert g.probabilities(S) == {("play", Q, SlotRef("genre"), M): 0.75, ("play", SlotRef("genre"), M): 0.25}
    assert g.slot_probabilities("genre") == {"pop": 0.75, "rock": 0.25}
    assert g.topological_order().index(Q) < g.topological_order().index(S)
    assert g.templates() == 3 and g.expansions() == 6
    stats = seed_grammar().stats()["intents"]["PlayMusic"]
    assert stats == {
        "nonterminals": 3,
        "rules": 7,
        "structural_rules": 4,
        "slot_values": 2,
        "templates": 3,
        "expansions": 6,
    }


def test_render_shows_alternatives_optional_parts_and_slots() -> None:
    text = seed_grammar().render()
    assert "<PlayMusic> =\n    | play (more | some)? {genre} music" in text
    assert "{genre} = pop | rock" in text


def test_render_names_shared_nonterminals_and_truncates_values() -> None:
    g = seed_grammar()
    pm = g.intents["PlayMusic"]
    pm.rules[S][("put", "on", Q, SlotRef("genre"))] = 1
    pm.rules[Q][("a", "few")] = 1
    pm.slot_values["genre"].update({f"g{i}": 1.0 for i in range(20)})
    text = g.render(max_values=3)
    assert "<n1> = (a few | more | some)" in text
    assert "| put on <n1> {genre}" in text
    assert "{genre} = pop | g0 | g1 | ... (19 more)" in text


def test_json_round_trip(tmp_path: Path) -> None:
    g = seed_grammar()
    loaded = Grammar.load(g.save(tmp_path / "g.json"))
    assert loaded.intents["PlayMusic"].rules == g.intents["PlayMusic"].rules
    assert loaded.render() == g.render()
    (tmp_path / "bad.json").write_text('{"PlayMusic": {"rules": []}}')
    with pytest.raises(DataError, match="bad.json: not a grammar"):
        Grammar.load(tmp_path / "bad.json")


def test_recursive_grammar_is_rejected() -> None:
    g = seed_grammar().intents["PlayMusic"]
    g.rules[Q][("very", Q)] = 1
    with pytest.raises(DataError, match="recursive"):
        g.expansions()
