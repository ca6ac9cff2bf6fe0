"""Topical-Chat grounded turns as the decoder-only study's three files (experiments/knobs/README.md).

- ``train_lm.jsonl``: one ``{"text": "knowledge: K history: H response: R", "conversation": id}`` line per grounded
  turn of the training splits (default valid_freq + valid_rare, as the encoder-decoder study), for ``data=text_lm``
  (``data.format=jsonl data.group_field=conversation``: split by conversation);
- ``train_copy_lm.jsonl``: the same prompts with the knowledge as the response (``... response: K``), the
  training texts of knob B's secondary model, which continues a prompt with its knowledge (the decoder-only
  counterpart of the encoder-decoder study's knowledge autoencoder);
- ``test_segments.jsonl``: one ``{"id", "knowledge", "history", "reference"}`` line per grounded turn of the test
  split (default test_freq, the first ``--max-test`` turns), for ``data=segments_jsonl`` with the template
  ``knowledge: {knowledge} history: {history} response:`` -- the training text up to the response, so the
  prompt the knobs steer is exactly what the model was trained on.

Knowledge is cut to its first ``--knowledge-words`` words and the history (the last 3 turns joined by a space) to
its last ``--history-words`` words, in both files, so that a turn fits the model's context; the response (the
reference) is kept whole. Usage: ``python experiments/knobs/decoder_only_data.py --out /tmp/knobs_do/data``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trustml.data.topical_chat_files import GroundedTurn, read_grounded_turns, read_wiki_sections

TEMPLATE = "knowledge: {knowledge} history: {history} response:"


def turn_segments(turn: GroundedTurn, knowledge_words: int, history_words: int) -> dict[str, str]:
    """The turn's ``knowledge`` (first words) and ``history`` (last words), whitespace-normalised."""
    knowledge = " ".join(turn.knowledge.split()[:knowledge_words])
    history_tokens = " ".join(turn.history).split()
    history = " ".join(history_tokens[-history_words:])
    return {"knowledge": knowledge, "history": history}


def main() -> None:
    """Write the three files (module doc) and print their line counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/topical_chat")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-splits", nargs="+", default=["valid_freq", "valid_rare"])
    parser.add_argument("--test-split", default="test_freq")
    parser.add_argument("--knowledge-words", type=int, default=48)
    parser.add_argument("--history-words", type=int, default=32)
    parser.add_argument("--max-test", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wiki = read_wiki_sections(Path(args.data_dir) / "wiki.json")
    lines, copies = [], []
    for split in args.train_splits:
        for turn in read_grounded_turns(args.data_dir, split, wiki=wiki):
            segments = turn_segments(turn, args.knowledge_words, args.history_words)
            prompt, conversation = TEMPLATE.format(**segments), f"{split}:{turn.conversation_id}"
            response = " ".join(turn.response.split())
            lines.append(json.dumps({"text": f"{prompt} {response}", "conversation": conversation}))
            copies.append(json.dumps({"text": f"{prompt} {segments['knowledge']}", "conversation": conversation}))
    (out / "train_lm.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "train_copy_lm.jsonl").write_text("\n".join(copies) + "\n", encoding="utf-8")
    test = []
    for turn in read_grounded_turns(args.data_dir, args.test_split, wiki=wiki)[: args.max_test]:
        row = {
            "id": f"{turn.conversation_id}:{turn.turn_index}",
            **turn_segments(turn, args.knowledge_words, args.history_words),
        }
        row["reference"] = " ".join(turn.response.split())
        test.append(json.dumps(row))
    (out / "test_segments.jsonl").write_text("\n".join(test) + "\n", encoding="utf-8")
    print(f"{out / 'train_lm.jsonl'}, {out / 'train_copy_lm.jsonl'}: {len(lines)} texts each; ", end="")
    print(f"{out / 'test_segments.jsonl'}: {len(test)} turns")


if __name__ == "__main__":
    main()
