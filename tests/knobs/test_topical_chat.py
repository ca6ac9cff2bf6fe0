"""Topical-Chat knowledge-grounded turns: synthetic files for the logic and errors, the real data when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, requires_shared_data
from trustml.data.topical_chat_files import read_grounded_turns, read_wiki_sections
from trustml.errors import ConfigError, DataError
from trustml.models.hf_seq2seq import topical_chat_input_builder

REAL_DATA = SHARED_DATA / "topical_chat"


def _turn(message, agent, sources):
    return {
        "message": message,
        "agent": agent,
        "sentiment": "Neutral",
        "knowledge_source": sources,
        "turn_rating": "Good",
    }


def _write(folder: Path, conversations=None, reading_sets=None, wiki=None) -> Path:
    conversations = conversations or {
        "c1": {
            "content": [
                _turn("hi, do you like football?", "agent_1", ["FS1"]),
                _turn("yes! it is played by two teams.", "agent_2", ["FS1", "FS2"]),
                _turn("cool.", "agent_1", ["Personal Knowledge"]),
                _turn("eleven players each.", "agent_2", ["FS2", "AS1"]),
            ]
        }
    }
    reading_sets = reading_sets or {
        "c1": {
            "agent_1": {"FS1": {"entity": "Football", "shortened_wiki_lead_section": 1}},
            "agent_2": {
                "FS1": {"entity": "Football", "summarized_wiki_lead_section": 2},
                "FS2": {"entity": "Team", "shortened_wiki_lead_section": 3},
            },
        }
    }
    wiki = wiki or {
        "shortened_wiki_lead_section": {"Football is a sport.": 1, "A team is a group.": 3},
        "summarized_wiki_lead_section": {"Football: a family of sports.": 2},
    }
    (folder / "conversations_toy.json").write_text(json.dumps(conversations))
    (folder / "reading_sets_toy.json").write_text(json.dumps(reading_sets))
    (folder / "wiki.json").write_text(json.dumps(wiki))
    return folder


def test_turns_get_their_agents_wiki_knowledge_and_history(tmp_path):
    turns = read_grounded_turns(_write(tmp_path), "toy", history_turns=2)
    assert [t.turn_index for t in turns] == [1, 3]  # turn 0: no history; turn 2: no factual source
    first, last = turns
    assert first.agent == "agent_2" and first.sources == ("FS1", "FS2")
    assert first.knowledge == "Football: a family of sports. A team is a group."
    assert first.history == ("hi, do you like football?",)
    assert last.knowledge == "A team is a group." and last.sources == ("FS2",)
    assert last.history == ("yes! it is played by two teams.", "cool.")
    assert last.segments(" | ") == {
        "knowledge": "A team is a group.",
        "history": "yes! it is played by two teams. | cool.",
    }
    everything = read_grounded_turns(tmp_path, "toy", history_turns=2, min_history_turns=0, require_knowledge=False)
    assert [t.turn_index for t in everything] == [0, 1, 2, 3]
    assert everything[2].knowledge == "" and everything[0].history == ()


def test_builder_marks_knowledge_and_history(tmp_path, tokenizer):
    turns = read_grounded_turns(_write(tmp_path), "toy")
    builder = topical_chat_input_builder(tokenizer, knowledge_tokens=8, history_tokens=8, max_length=64)
    batch = builder([t.segments() for t in turns])
    ids = builder.vocabulary
    assert {ids.id_of("knowledge"), ids.id_of("history")} <= set(batch["segment_ids"].flatten().tolist())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conversations": {"c1": {"content": [{"message": "hi"}]}}}, "missing"),
        ({"conversations": {"c2": {"content": []}}}, "no reading set for conversation c2"),
        ({"reading_sets": {"c1": {"agent_1": {}}}}, "no entry for agent_2|reading set has no FS1"),
        ({"wiki": {"shortened_wiki_lead_section": {"x": 1}, "summarized_wiki_lead_section": {}}}, "wiki.json lacks"),
        ({"wiki": {"shortened_wiki_lead_section": {}}}, "summarized_wiki_lead_section"),
    ],
)
def test_malformed_files_are_reported(tmp_path, change, message):
    _write(tmp_path, **change)
    with pytest.raises(DataError, match=message):
        read_grounded_turns(tmp_path, "toy")


def test_missing_and_broken_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_grounded_turns(tmp_path, "toy")
    _write(tmp_path)
    (tmp_path / "wiki.json").write_text("{\n  broken")
    with pytest.raises(DataError, match=r"wiki.json:2: malformed JSON"):
        read_wiki_sections(tmp_path / "wiki.json")
    with pytest.raises(ConfigError, match="min_history_turns"):
        read_grounded_turns(tmp_path, "toy", history_turns=1, min_history_turns=2)


@requires_shared_data("topical_chat")
def test_real_topical_chat_turns():
    wiki = read_wiki_sections(REAL_DATA / "wiki.json")
    assert len(wiki) > 500
    turns = read_grounded_turns(REAL_DATA, "test_freq", history_turns=3, wiki=wiki)
    assert len(turns) > 8000
    assert all(t.knowledge and t.sources and 1 <= len(t.history) <= 3 for t in turns)
    assert all(set(t.sources) <= {"FS1", "FS2", "FS3"} for t in turns)
