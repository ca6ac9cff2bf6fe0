"""``method=lm`` federates: FedAvg over a tiny GPT-2 on a small corpus, evaluated each round by the method's own
``test_step`` (loss, next-token accuracy, corpus perplexity), which the round records and the results carry."""

from __future__ import annotations

import json
from pathlib import Path

from tests.lm.conftest import VOCAB, lm_overrides, read_results, run_app_in_process, write_corpus


def test_a_language_model_federates_and_its_perplexity_falls_round_by_round(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    run_dir = tmp_path / "run"
    overrides = lm_overrides(
        corpus,
        "method=lm",
        "seed=0",
        "federation=fedavg",
        "federation.rounds=3",
        "federation.partition.num_clients=4",
        "federation.selection.clients_per_round=4",
        "federation.client.local_epochs=2",
    )
    assert run_app_in_process(run_dir, overrides) == 0, (run_dir / "run.json").read_text()
    history = [json.loads(line) for line in (run_dir / "federation" / "rounds.jsonl").read_text().splitlines()]
    perplexity = [r["test_perplexity"] for r in history]
    assert all(r["aggregated"] and r["answered"] == 4 for r in history)
    assert all(later < earlier for earlier, later in zip(perplexity, perplexity[1:], strict=False)), perplexity
    # uniform guessing over the trained vocabulary has perplexity ~VOCAB; the templated corpus is far more predictable
    assert perplexity[-1] < VOCAB / 20, perplexity
    results = read_results(run_dir)
    assert results["federation/final_test_perplexity"] == perplexity[-1]
    assert results["test/perplexity"] == perplexity[-1]  # the runner's test of the final global model agrees
