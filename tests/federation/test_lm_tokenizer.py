"""A federated language model fits its trained tokenizer once, on the whole training split, not on one device's
rows: every client trains with that one vocabulary, separately built clients (as in Flower's deployment engine,
one process per client) get the same one, and the run learns with it."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.lm.conftest import VOCAB, lm_overrides, read_results, run_app_in_process
from trustml.data.text_lm import TextLMConfig, TextLMDataModule
from trustml.federation.client import ClientDataModule
from trustml.methods.lm import CausalLMBase, tokenizer_texts
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig, learn_subwords, train_wordpiece

TOPICS = ["harbor", "violin", "glacier", "pepper", "lantern", "orchid", "canyon", "saddle", "comet", "marble", "tulip"]
JOBS = ["nurse", "engineer", "teacher", "pilot"]


def write_topical_corpus(path: Path, n_docs: int = 44, per_doc: int = 10, seed: int = 0) -> Path:
    """Templated sentences grouped by ``doc``; each doc talks about its own topic words, so that the vocabulary
    fitted on one doc (one device under the natural partition) differs from the one fitted on all of them."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for doc in range(n_docs):
            topic, other = TOPICS[doc % len(TOPICS)], f"{TOPICS[(doc * 7 + 3) % len(TOPICS)]}s"
            for _ in range(per_doc):
                job = rng.choice(JOBS)
                text = rng.choice(
                    [
                        f"The {job} likes the {topic} and the {other} .",
                        f"A {topic} is what the {job} wants , not {other} .",
                    ]
                )
                f.write(json.dumps({"text": text, "doc": f"doc{doc}"}) + "\n")
    return path


def digest(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


def test_a_federated_lm_trains_every_client_with_the_whole_splits_tokenizer_and_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_topical_corpus(tmp_path / "corpus.jsonl")
    data = TextLMDataModule(TextLMConfig(paths=[str(corpus)], group_field="doc"))
    data.setup("fit")
    train_texts = list(data.splits["train"].inputs)
    whole = train_wordpiece(train_texts, VOCAB)
    seen: list[str] = []  # the tokenizer of every training step of every client fit
    original = CausalLMBase.training_loss

    def recording_loss(self: CausalLMBase, batch: dict) -> tuple[torch.Tensor, int]:
        seen.append(digest(self.model.tokenizer_json or ""))
        return original(self, batch)

    monkeypatch.setattr(CausalLMBase, "training_loss", recording_loss)
    run_dir = tmp_path / "run"
    overrides = lm_overrides(
        corpus,
        "method=lm",
        "seed=0",
        "federation=fedavg",
        "federation.rounds=4",
        "federation.partition.kind=natural",  # one device per doc: a device's own vocabulary would miss most topics
        "federation.partition.group_column=group",
        "federation.selection.clients_per_round=8",
        "federation.client.local_epochs=3",
    )
    assert run_app_in_process(run_dir, overrides) == 0, (run_dir / "run.json").read_text()

    # the clients: one vocabulary for every step of every client, the whole training split's
    partition = np.load(run_dir / "federation" / "partition.npz")
    num_clients = len(partition["starts"])
    assert num_clients == len(set(data.splits["train"].groups["group"]))
    history = [json.loads(line) for line in (run_dir / "federation" / "rounds.jsonl").read_text().splitlines()]
    assert sum(r["answered"] for r in history) == 4 * 8
    assert len(seen) >= 4 * 8 * 3 and set(seen) == {digest(whole)}
    first_device_rows = partition["rows"][partition["starts"][0] : partition["ends"][0]]
    one_device = train_wordpiece([train_texts[i] for i in first_device_rows], VOCAB)
    assert digest(one_device) != digest(whole)  # the check above can tell the two apart
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert final["model._extra_state"]["tokenizer_json"] == whole  # the released model carries the same one

    # the run learns: the global model's held-out perplexity (each round's evaluation) falls to under half the first
    # round's and far below uniform guessing over the vocabulary
    vocabulary = len(json.loads(whole)["model"]["vocab"])
    perplexity = [r["test_perplexity"] for r in history]
    assert perplexity[-1] < 0.5 * perplexity[0], perplexity
    assert perplexity[-1] < vocabulary / 10, (perplexity, vocabulary)
    assert read_results(run_dir)["test/perplexity"] == pytest.approx(perplexity[-1], rel=1e-6)


def test_separately_built_clients_fit_the_same_tokenizer(tmp_path: Path) -> None:
    """Two clients built apart (as every ClientApp process builds its own) from disjoint rows fit one tokenizer."""
    corpus = write_topical_corpus(tmp_path / "corpus.jsonl")
    data = TextLMDataModule(TextLMConfig(paths=[str(corpus)], group_field="doc"))
    data.setup("fit")
    rows = np.arange(len(data.splits["train"]))
    jsons = []
    for part in (rows[:10], rows[-10:]):
        client = ClientDataModule(data, part)
        client.setup("fit")
        model = HFCausalLM(
            HFCausalLMConfig(
                random_init_config={"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32},
                tokenizer_train_vocab_size=VOCAB,
                max_length=32,
            )
        )
        assert tokenizer_texts(client) == list(data.splits["train"].inputs)
        model.fit_tokenizer(tokenizer_texts(client))
        jsons.append(model.tokenizer_json)
    assert jsons[0] == jsons[1] == train_wordpiece(list(data.splits["train"].inputs), VOCAB)
    # a centralized fit (the data module itself) reads the same texts
    assert tokenizer_texts(data) == list(data.splits["train"].inputs)


def test_wordpiece_merges_break_ties_by_the_pair_so_training_is_reproducible() -> None:
    """Pairs of equal count merge in lexicographic order, whatever the order the words come in (the library's
    trainer broke such ties in hash-map order, so two fits on the same texts could learn different vocabularies)."""
    counts = {"cd": 3, "ab": 3, "x": 1}
    alphabet = ["##b", "##d", "a", "c", "x"]
    assert learn_subwords(counts, vocab_size=100, reserved=5) == [*alphabet, "ab", "cd"]
    assert learn_subwords(dict(reversed(counts.items())), vocab_size=100, reserved=5) == [*alphabet, "ab", "cd"]
    # the budget counts the reserved tokens and the alphabet: room for one merge, the tie goes to ("a", "##b")
    assert learn_subwords(counts, vocab_size=5 + len(alphabet) + 1, reserved=5) == [*alphabet, "ab"]
    # word-inner merges keep the prefix; the most frequent pair first, then the tie ("##ab", "##ab") < ("x", "##ab")
    assert learn_subwords({"xabab": 2}, vocab_size=100, reserved=5) == ["##a", "##b", "x", "##ab", "##abab", "xabab"]
    # a pair seen once is never merged
    assert learn_subwords({"ab": 1}, vocab_size=100, reserved=5) == ["##b", "a"]
