"""The pynini acceptor: counting, enumeration, sampling from the grammar distribution, pattern filters."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.synth.test_grammar import seed_grammar
from trustml.errors import ConfigError
from trustml.synth.fst import GrammarFst


def test_count_and_enumerate_distinct_annotated_sentences() -> None:
    fst = GrammarFst(seed_grammar())["PlayMusic"]
    sentences = {u.annotated() for u in fst.enumerate()}
    assert fst.count() == len(sentences) == 6
    assert "play more [rock](genre) music" in sentences
    assert len(list(fst.enumerate(limit=2))) == 2


def test_samples_follow_the_grammar_probabilities() -> None:
    fst = GrammarFst(seed_grammar())["PlayMusic"]
    samples = fst.sample(4000, seed=0)
    assert len(samples) == 4000
    share_pop = sum(u.slot_values() == [("genre", "pop")] for u in samples) / 4000
    share_bare = sum(u.text.split()[1] in ("pop", "rock") for u in samples) / 4000
    assert share_pop == pytest.approx(0.75, abs=0.03)
    assert share_bare == pytest.approx(0.25, abs=0.03)
    assert samples[0].spans[0].slot == "genre" and samples[0].value(samples[0].spans[0]) in ("pop", "rock")


def test_sampling_is_deterministic_for_a_seed_and_shuffled() -> None:
    fst = GrammarFst(seed_grammar())["PlayMusic"]
    a, b = fst.sample(200, seed=5), fst.sample(200, seed=5)
    assert a == b
    assert a != sorted(a, key=lambda u: u.text)


def test_pattern_conditioned_sampling(toy) -> None:
    from trustml.synth.induction import InductionConfig, induce_grammar

    grammar, _ = induce_grammar(toy, InductionConfig(prior_weight=1.5))
    fst = GrammarFst(grammar)["PlayMusic"]
    pattern = ("other", "genre", "other", "artist")
    samples = fst.sample(300, seed=1, pattern=pattern)
    assert {u.pattern() for u in samples} == {pattern}
    assert len({u.text for u in samples}) > 5
    assert fst.count(pattern) == len(list(fst.enumerate(pattern=pattern)))
    with pytest.raises(ConfigError, match="cannot produce pattern other \\+ artist \\+ genre"):
        fst.sample(1, seed=0, pattern=("other", "artist", "genre"))


def test_punctuation_is_attached_when_spelling_sentences() -> None:
    g = seed_grammar()
    g.intents["PlayMusic"].rules[next(iter(g.intents["PlayMusic"].rules))][("play", "it", "?")] = 1
    texts = {u.text for u in GrammarFst(g)["PlayMusic"].enumerate()}
    assert "play it?" in texts


def test_unknown_intent_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no grammar for intent 'Nope'"):
        GrammarFst(seed_grammar())["Nope"]


def test_sample_counts_per_intent() -> None:
    out = GrammarFst(seed_grammar()).sample({"PlayMusic": 7}, seed=0)
    assert Counter(u.intent for u in out) == {"PlayMusic": 7}
