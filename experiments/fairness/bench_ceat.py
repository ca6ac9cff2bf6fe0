"""CEAT speed: ``trustml.fairness.ceat`` against a plain per-draw ``model(**batch)`` loop, same draws, same encoder.

    .venv/bin/python experiments/fairness/bench_ceat.py [--draws 1000] [--baseline-draws 25] [--repeats 3]

Contexts are Topical-Chat turns (``../shared/data/topical_chat``; words without a turn fall back to templates)
and the encoder is the offline MiniLM. ``trustml`` times a whole ``ceat(...)`` call with ``--draws`` draws (context
collection, encoding every distinct sampled (word, context) pair once in length-sorted batches, the draws and
the random-effects combination). The baseline is what a direct implementation does per draw: tokenize the draw's
contexts (one per word, padded together) and run ``model(**batch)``, then mean-pool each word's tokens; it is timed
on ``--baseline-draws`` draws of the same sampling and reported as contexts per second. Both rates count
*contexts per draw x draws* (the work a CEAT result stands for), so they compare directly; the baseline's time
for ``--draws`` draws is that count divided by its measured rate. Medians of ``--repeats`` runs; one process,
one thread pool, nothing else running.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from trustml.data.topical_chat_files import read_conversations
from trustml.fairness.ceat import ceat, collect_contexts, load_encoder
from trustml.fairness.word_lists import shipped_weat_tests

DATA = Path(os.environ.get("TRUSTML_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
FILES = ("conversations_valid_freq.json", "conversations_valid_rare.json", "conversations_test_freq.json")


def corpus() -> list[str]:
    """Every Topical-Chat turn of the files in :data:`FILES`."""
    folder = DATA / "topical_chat"
    if not folder.is_dir():
        raise SystemExit(f"needs the development data at {folder}")
    return [turn.message for name in FILES for turn in read_conversations(folder / name)]


def baseline_rate(model, tokenizer, contexts, words: tuple[str, ...], draws: int, seed: int) -> float:
    """Contexts per second of a per-draw ``model(**batch)`` loop (one context per word per draw)."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(draws):
            texts, spans = [], []
            for word in words:
                rows = contexts.occurrences[word]
                sentence, s, e = rows[rng.integers(len(rows))]
                texts.append(contexts.sentences[sentence])
                spans.append((s, e))
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=128, return_offsets_mapping=True, return_tensors="pt"
            )
            offsets = batch.pop("offset_mapping")
            hidden = model(**batch).last_hidden_state
            starts = torch.tensor([s for s, _ in spans]).unsqueeze(1)
            ends = torch.tensor([e for _, e in spans]).unsqueeze(1)
            mask = (offsets[..., 1] > offsets[..., 0]) & (offsets[..., 0] < ends) & (offsets[..., 1] > starts)
            weights = mask.unsqueeze(-1).float()
            _ = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return draws * len(words) / (time.perf_counter() - start)


def main() -> None:
    """Time both on WEAT 6, 7 and 8 and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--baseline-draws", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_encoder()
    sentences = corpus()
    tests = shipped_weat_tests()
    machine = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}, load average "
        f"{os.getloadavg()[0]:.2f}; corpus: {len(sentences)} Topical-Chat turns\n"
    )
    print(
        "| test | words | from templates | trustml s (1000 draws) | trustml contexts/s | distinct pairs encoded "
        "| baseline contexts/s | baseline s (projected) | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("weat6", "weat7", "weat8"):
        test = tests[name]
        contexts = collect_contexts(test.words, sentences)
        ours, encoded = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = ceat(test, model, tokenizer, contexts=contexts, n_draws=args.draws, seed=0)
            ours.append(time.perf_counter() - start)
            encoded = result.n_encoded
        work = args.draws * len(test.words)
        ours_s = statistics.median(ours)
        base = statistics.median(
            baseline_rate(model, tokenizer, contexts, test.words, args.baseline_draws, seed)
            for seed in range(args.repeats)
        )
        print(
            f"| {name} | {len(test.words)} | {len(contexts.fallback_words)} | {ours_s:.1f} | {work / ours_s:.0f} | "
            f"{encoded} | {base:.0f} | {work / base:.0f} | {work / base / ours_s:.1f}x |"
        )


if __name__ == "__main__":
    main()
