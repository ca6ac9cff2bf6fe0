"""Write Topical-Chat turn sentiment as JSONL train/val/test files (text, label, conversation) for text audits.

The canary audit inserts a canary into the training file only, so the splits are separate files:
training = the first ``--max-conversations`` conversations of valid_freq + valid_rare minus a held-out
``--val-fraction`` of them (by conversation), test = the first ``--max-conversations`` of test_freq —
the same turns ``data=topical_chat_sentiment data.max_conversations=N`` reads.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trustml.data.topical_chat_files import Turn, read_conversations

TRAIN_FILES = ("conversations_valid_freq.json", "conversations_valid_rare.json")
TEST_FILE = "conversations_test_freq.json"


def first_conversations(turns: list[Turn], limit: int | None) -> list[Turn]:
    """The turns of the first ``limit`` conversations (all when ``limit`` is None), in file order."""
    kept: dict[str, None] = {}
    for turn in turns:
        if limit is None or len(kept) < limit or turn.conversation_id in kept:
            kept.setdefault(turn.conversation_id, None)
    return [t for t in turns if t.conversation_id in kept]


def write_jsonl(turns: list[Turn], path: Path) -> None:
    """One ``{"text", "label", "conversation"}`` line per turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"text": t.message, "label": t.sentiment, "conversation": t.conversation_id}) for t in turns)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="../shared/data/topical_chat")
    parser.add_argument("--max-conversations", type=int, default=300)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="training JSONL to write; val/test go beside it")
    args = parser.parse_args()
    data_dir, out = Path(args.data_dir), Path(args.out)
    train = first_conversations(
        [t for name in TRAIN_FILES for t in read_conversations(data_dir / name)], args.max_conversations
    )
    conversations = sorted({t.conversation_id for t in train})
    random.Random(args.seed).shuffle(conversations)
    held_out = set(conversations[: max(1, round(args.val_fraction * len(conversations)))])
    write_jsonl([t for t in train if t.conversation_id not in held_out], out)
    write_jsonl([t for t in train if t.conversation_id in held_out], out.with_name("val.jsonl"))
    write_jsonl(
        first_conversations(read_conversations(data_dir / TEST_FILE), args.max_conversations),
        out.with_name("test.jsonl"),
    )


if __name__ == "__main__":
    main()
