"""The one reader of Topical-Chat's files: conversations with turn sentiments, reading sets and wiki sections.

:func:`read_conversations` gives the turns of a ``conversations_*.json`` file with their sentiment
(``data=topical_chat_sentiment``); :func:`read_grounded_turns` gives each turn with its wiki knowledge and the
preceding turns (``data=topical_chat_grounded``, ``trustml-generate``). Knowledge of a turn = the wiki lead
sections of the turn's factual sources (``FS1``..``FS3`` in its ``knowledge_source``) from the responding agent's
reading set, looked up in ``wiki.json``; history = the last ``history_turns`` messages before it.

Every file is decoded by a declared ``encoding`` (see :mod:`trustml.data.text_files`); a missing or malformed file
is a :class:`~trustml.errors.DataError` naming the file (and line) and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustml.data.text_files import read_text
from trustml.errors import ConfigError, DataError

SENTIMENTS = (
    "Curious to dive deeper",
    "Neutral",
    "Surprised",
    "Happy",
    "Sad",
    "Disgusted",
    "Angry",
    "Fearful",
)
WIKI_KINDS = ("shortened_wiki_lead_section", "summarized_wiki_lead_section")


def read_json(path: str | Path, encoding: str = "utf-8", encoding_option: str = "data.encoding") -> Any:
    """The JSON of a Topical-Chat file decoded by ``encoding``; errors name the file (and line) and the fix.

    Bytes that do not decode are a :class:`DataError` naming the line and ``encoding_option``, the setting to change.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Topical-Chat file not found: {path} (set data.data_dir to the topical_chat folder)")
    try:
        return json.loads(read_text(path, encoding, encoding_option))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


# --- turns with their sentiment --------------------------------------------------------------------------------
@dataclass
class Turn:
    """One conversation turn with its sentiment label and where it comes from."""

    message: str
    sentiment: str
    conversation_id: str
    agent: str


def read_conversations(path: str | Path, encoding: str = "utf-8", encoding_option: str = "data.encoding") -> list[Turn]:
    """All turns of a Topical-Chat ``conversations_*.json`` file, in file order, with their sentiment."""
    turns = []
    for conv_id, conv in read_json(path, encoding, encoding_option).items():
        for turn_no, turn in enumerate(conv.get("content", [])):
            sentiment = turn.get("sentiment")
            if sentiment not in SENTIMENTS:
                raise DataError(
                    f"{path}: conversation {conv_id} turn {turn_no} has sentiment {sentiment!r}; expected one of "
                    f"{list(SENTIMENTS)}"
                )
            turns.append(Turn(turn["message"], sentiment, str(conv_id), str(turn["agent"])))
    return turns


# --- turns with their knowledge and history ---------------------------------------------------------------------
@dataclass(frozen=True)
class GroundedTurn:
    """One response of a Topical-Chat conversation with its knowledge and dialogue history."""

    conversation_id: str
    turn_index: int
    agent: str
    response: str
    knowledge: str
    history: tuple[str, ...]
    sources: tuple[str, ...]

    def segments(self, turn_separator: str = " ") -> dict[str, str]:
        """The encoder input as named segments: ``knowledge`` and ``history`` (turns joined by the separator)."""
        return {"knowledge": self.knowledge, "history": turn_separator.join(self.history)}


def read_wiki_sections(path: str | Path, encoding: str = "utf-8") -> dict[int, str]:
    """``wiki.json`` inverted: wiki lead-section id -> text (both the shortened and the summarized kinds)."""
    data = read_json(path, encoding)
    sections: dict[int, str] = {}
    for kind in WIKI_KINDS:
        if kind not in data:
            raise DataError(f"{path}: missing top-level key {kind!r}; expected {list(WIKI_KINDS)}")
        sections.update({int(section_id): text for text, section_id in data[kind].items()})
    return sections


def _turn_knowledge(
    reading_set: dict[str, Any], sources: Sequence[str], wiki: dict[int, str], where: str
) -> tuple[str, tuple[str, ...]]:
    texts, used = [], []
    for source in dict.fromkeys(s for s in sources if s.startswith("FS")):
        entry = reading_set.get(source)
        if entry is None:
            raise DataError(f"{where}: reading set has no {source}")
        section_id = next((entry[k] for k in WIKI_KINDS if k in entry), None)
        if section_id is None:
            raise DataError(f"{where}: {source} has no wiki lead section id ({list(WIKI_KINDS)})")
        if int(section_id) not in wiki:
            raise DataError(f"{where}: {source} names wiki section {section_id}, which wiki.json lacks")
        texts.append(wiki[int(section_id)])
        used.append(source)
    return " ".join(texts), tuple(used)


_TURN_KEYS = ("message", "agent", "knowledge_source")


def _checked_content(conversation: Any, where: str) -> list[dict[str, Any]]:
    content = conversation.get("content") if isinstance(conversation, dict) else None
    if not isinstance(content, list):
        raise DataError(f"{where}: missing the 'content' list of turns")
    for index, turn in enumerate(content):
        missing = [key for key in _TURN_KEYS if key not in turn]
        if missing:
            raise DataError(f"{where} turn {index}: missing {missing}")
    return content


def read_grounded_turns(
    data_dir: str | Path,
    split: str,
    history_turns: int = 3,
    min_history_turns: int = 1,
    require_knowledge: bool = True,
    wiki: dict[int, str] | None = None,
    encoding: str = "utf-8",
) -> list[GroundedTurn]:
    """Every turn of ``conversations_<split>.json`` as a :class:`GroundedTurn`, in file order.

    Turns with fewer than ``min_history_turns`` earlier turns are skipped, and so are turns without a factual
    source when ``require_knowledge``. ``wiki`` (from :func:`read_wiki_sections`) is read from ``data_dir`` if None.
    """
    if history_turns < 0 or min_history_turns < 0 or min_history_turns > max(history_turns, 0):
        raise ConfigError(
            f"history_turns={history_turns}, min_history_turns={min_history_turns}: need "
            "0 <= min_history_turns <= history_turns"
        )
    data_dir = Path(data_dir)
    conversations_path = data_dir / f"conversations_{split}.json"
    reading_path = data_dir / f"reading_sets_{split}.json"
    conversations, reading_sets = read_json(conversations_path, encoding), read_json(reading_path, encoding)
    wiki = read_wiki_sections(data_dir / "wiki.json", encoding) if wiki is None else wiki
    turns = []
    for conversation_id, conversation in conversations.items():
        if conversation_id not in reading_sets:
            raise DataError(f"{reading_path}: no reading set for conversation {conversation_id}")
        content = _checked_content(conversation, f"{conversations_path}: conversation {conversation_id}")
        messages = [turn["message"] for turn in content]
        for index, turn in enumerate(content):
            if index < min_history_turns:
                continue
            agent = turn["agent"]
            where = f"{reading_path}: conversation {conversation_id} turn {index} ({agent})"
            if agent not in reading_sets[conversation_id]:
                raise DataError(f"{where}: the reading set has no entry for {agent}")
            knowledge, used = _turn_knowledge(
                reading_sets[conversation_id][agent], turn["knowledge_source"], wiki, where
            )
            if require_knowledge and not used:
                continue
            turns.append(
                GroundedTurn(
                    conversation_id=conversation_id,
                    turn_index=index,
                    agent=agent,
                    response=turn["message"],
                    knowledge=knowledge,
                    history=tuple(messages[max(0, index - history_turns) : index]) if history_turns else (),
                    sources=used,
                )
            )
    return turns
