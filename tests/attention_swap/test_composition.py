"""``method=attention_swap`` composed with ``optimizer=dp_adam`` (example-level DP on seq2seq) learns."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

import trustml.methods.attention_swap  # noqa: F401 - registers method=attention_swap
from tests.attention_swap.test_method import _overrides
from tests.conftest import compose_train
from tests.knobs.conftest import tiny_model
from trustml.runner import run

VOCABULARY = 30522


@pytest.fixture(scope="module")
def untied_bart(tokenizer, tmp_path_factory):
    """A tiny BART whose LM head is its own matrix (not the embedding table), saved to a folder."""
    config = tiny_model("bart", "sdpa", tokenizer).config
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("untied_bart")
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    return folder


DP = [
    "optimizer=dp_adam",
    "optimizer.lr=0.03",
    "optimizer.noise_multiplier=1.0",
    "optimizer.target_epsilon=null",
    "optimizer.deterministic=true",
]


def test_dp_training_with_a_frozen_self_attention_and_embeddings_learns(untied_bart, toy_topical_chat, tmp_path):
    overrides = [*DP, "trainer.max_epochs=8", "method.freeze=[decoder_self_attention,embeddings]"]
    results = run(compose_train(_overrides(toy_topical_chat, untied_bart, *overrides), tmp_path)).results
    assert results["dp_steps"] >= 16 and 0 < results["epsilon"] < 20
    assert results["trainable_fraction"] < 0.3
    # a random model sits near the vocabulary size; with sigma = 1 on 21 examples it still halves (measured 15,018)
    assert results["test/perplexity"] < VOCABULARY / 1.6


def test_dp_on_a_tied_embedding_passes_the_layerwise_attribution_check(tokenizer, toy_topical_chat, tmp_path):
    """BART's LM head owns the embedding table too (one Parameter, two modules): the layerwise engine adds both
    modules' shares, and its check against single-sample gradients (run once per model) accepts it."""
    folder = tmp_path / "tied"
    tiny_model("bart", "sdpa", tokenizer).save_pretrained(folder)
    cfg = compose_train(_overrides(toy_topical_chat, folder, *DP, "trainer.max_epochs=1"), tmp_path / "run")
    results = run(cfg).results
    assert results["dp_steps"] >= 1 and results["trainable_fraction"] > 0.9


FEDAVG = [
    "federation=fedavg",
    "federation.partition.num_clients=4",
    "federation.selection.clients_per_round=2",
    "federation.rounds=6",
    "trainer.max_epochs=1",
    "optimizer.lr=0.03",
]


def test_federated_training_learns_and_frozen_groups_never_travel(untied_bart, toy_topical_chat, tmp_path):
    frozen = run(
        compose_train(
            _overrides(toy_topical_chat, untied_bart, *FEDAVG, "method.freeze=[decoder_self_attention,embeddings]"),
            tmp_path / "frozen",
        )
    ).results
    full = run(compose_train(_overrides(toy_topical_chat, untied_bart, *FEDAVG, "method.freeze=[]"), tmp_path / "full"))
    full = full.results
    for results in (frozen, full):
        assert results["federation/aggregated_rounds"] == 6
        # only trainable weights (and float buffers, e.g. BART's final_logits_bias) are in a message
        assert (
            results["params_trainable"] <= results["federation/floats_per_message"] < results["params_trainable"] + 1e5
        )
        assert results["test/perplexity"] < VOCABULARY / 4
    ratio = frozen["federation/bytes_per_round"] / full["federation/bytes_per_round"]
    assert ratio == pytest.approx(frozen["federation/floats_per_message"] / full["federation/floats_per_message"])
    assert ratio < 0.3
