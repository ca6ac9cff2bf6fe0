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


def _derivations(grammar, symbol, slot_values):
    """Every derivation of ``symbol`` as (label tuple, probability), by brute force (tiny grammars only)."""
    from itertools import product

    from trustml.synth.grammar import Nonterminal, SlotRef

    if isinstance(symbol, SlotRef):
        total = sum(slot_values[symbol.slot].values())
        return [(((symbol.slot, v),), w / total) for v, w in slot_values[symbol.slot].items()]
    if not isinstance(symbol, Nonterminal):
        return [((symbol,), 1.0)]
    out = []
    for rhs, p in grammar.probabilities(symbol).items():
        for parts in product(*(_derivations(grammar, s, slot_values) for s in rhs)):
            labels = tuple(x for seq, _ in parts for x in seq)
            prob = p
            for _, q in parts:
                prob *= q
            out.append((labels, prob))
    return out


def _pattern_of(labels) -> tuple[str, ...]:
    out: list[str] = []
    for x in labels:
        element = x[0] if isinstance(x, tuple) else "other"
        if not (element == "other" and out and out[-1] == "other"):
            out.append(element)
    return tuple(out)


def test_pattern_conditioned_sampling_draws_the_exact_conditional_distribution(toy) -> None:
    from trustml.synth.induction import InductionConfig, induce_grammar

    grammar, _ = induce_grammar(toy, InductionConfig(prior_weight=1.5))
    g = grammar.intents["PlayMusic"]
    pattern = ("other", "genre", "other")
    exact: Counter = Counter()
    for labels, p in _derivations(g, g.start, g.slot_values):
        if _pattern_of(labels) == pattern:
            exact[" ".join(x[1] if isinstance(x, tuple) else x for x in labels)] += p
    norm = sum(exact.values())
    fst = GrammarFst(grammar)["PlayMusic"]
    n = 6000
    drawn = Counter(u.text.lower() for u in fst.sample(n, seed=3, pattern=pattern))
    assert set(drawn) <= set(exact)
    for text, p in exact.items():
        assert drawn[text] / n == pytest.approx(p / norm, abs=0.025), text
    # derivation counts on the grammar match brute force, with and without the pattern
    derivations = _derivations(g, g.start, g.slot_values)
    assert fst.sampler.derivations(pattern) == sum(_pattern_of(d) == pattern for d, _ in derivations)
    assert fst.sampler.derivations(None) == len(derivations) == g.expansions()


def _deep_grammar(levels: int):
    """``A_{k+1} -> A_k x | x A_k``: ``levels + 1`` rules whose flat acceptor (and language) doubles per level."""
    from trustml.synth.grammar import Grammar, IntentGrammar, Nonterminal, SlotRef

    rules = {Nonterminal("A0"): {(SlotRef("v"),): 1, ("x",): 1}}
    for k in range(levels):
        rules[Nonterminal(f"A{k + 1}")] = {(Nonterminal(f"A{k}"), "x"): 1, ("x", Nonterminal(f"A{k}")): 1}
    top = Nonterminal(f"A{levels}")
    return Grammar({"Deep": IntentGrammar("Deep", top, rules, {"v": {"a": 1.0, "b": 1.0}})})


def test_large_grammars_sample_and_count_on_the_grammar_without_flattening() -> None:
    from trustml.synth.fst import flat_arcs

    grammar = _deep_grammar(40)  # flat acceptor ~ 2^41 arcs: compiling it would exhaust any memory
    fst = GrammarFst(grammar, max_arcs=10_000)["Deep"]
    assert fst.arcs == flat_arcs(grammar.intents["Deep"]) > 2**40
    assert not fst.count_is_exact()
    samples = fst.sample(300, seed=0)
    assert len(samples) == 300 and any(u.spans for u in samples)
    assert fst.count() == grammar.intents["Deep"].expansions()
    with pytest.raises(ConfigError, match="max_arcs=10,000"):
        list(fst.enumerate(limit=3))
    small = GrammarFst(_deep_grammar(3), max_arcs=10_000)["Deep"]
    assert small.count_is_exact() and small.count() == len(set(small.enumerate()))


def test_without_pynini_sampling_and_derivation_counts_still_work(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynini", None)  # import pynini now raises ImportError
    fst = GrammarFst(seed_grammar())
    assert fst.count_report() == {"PlayMusic": {"sentences": 6, "exact": False, "flat_arcs": 10}}
    assert len(fst["PlayMusic"].sample(20, seed=0)) == 20
    with pytest.raises(ConfigError, match=r"need pynini: pip install 'trustml\[synth\]'"):
        list(fst["PlayMusic"].enumerate())
