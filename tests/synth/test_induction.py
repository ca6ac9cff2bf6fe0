"""Bayesian model merging: generalization, the prior-weight knob, determinism, search modes, coverage."""

from __future__ import annotations

import pytest

from tests.synth.conftest import SNIPS_DIR, needs_snips, toy_utterances
from trustml.errors import ConfigError
from trustml.synth.fst import GrammarFst
from trustml.synth.induction import InductionConfig, induce_grammar


def _sentences(grammar, intent: str) -> set[str]:
    return {u.annotated() for u in GrammarFst(grammar)[intent].enumerate()}


def test_merging_generalizes_the_toy_data_like_the_seed_grammar(toy) -> None:
    grammar, traces = induce_grammar(toy, InductionConfig(prior_weight=1.5))
    assert "(more | some) {genre} music" in grammar.render()
    sentences = _sentences(grammar, "PlayMusic")
    assert "play more [pop](genre) music" in sentences  # never seen: 'more' only came with 'rock'
    assert "i want to hear some [jazz](genre) music by [Madonna](artist)" in sentences
    for trace in traces:
        assert trace.log_posterior_end > trace.log_posterior_start
        assert trace.merges + trace.chunks > 0


def test_every_golden_utterance_stays_derivable(toy) -> None:
    grammar, _ = induce_grammar(toy, InductionConfig(prior_weight=2.0))
    for intent in ("PlayMusic", "GetWeather"):
        sentences = _sentences(grammar, intent)
        for u in toy:
            if u.intent == intent:
                assert u.annotated().lower() in {s.lower() for s in sentences}


def test_zero_prior_weight_keeps_one_rule_per_utterance(toy) -> None:
    grammar, traces = induce_grammar(toy, InductionConfig(prior_weight=0.0))
    assert all(t.merges == 0 and t.chunks == 0 for t in traces)
    assert grammar.intents["PlayMusic"].templates() == 8


def test_prior_weight_controls_generalization() -> None:
    utts = toy_utterances()
    templates = [
        induce_grammar(utts, InductionConfig(prior_weight=w))[0].intents["PlayMusic"].templates() for w in (0.0, 1.0)
    ]
    assert templates[0] < templates[1]


def test_deterministic_for_a_seed_and_beam_search_runs(toy) -> None:
    a = induce_grammar(toy, InductionConfig(seed=3))[0].render()
    b = induce_grammar(list(toy), InductionConfig(seed=3))[0].render()
    assert a == b
    beam, traces = induce_grammar(toy, InductionConfig(search="beam", beam_width=2))
    assert all(t.log_posterior_end > t.log_posterior_start for t in traces)
    assert "play [jazz](genre) music" in _sentences(beam, "PlayMusic")


@pytest.mark.parametrize(
    "kwargs", [{"search": "sideways"}, {"prior_weight": -1.0}, {"beam_width": 0}, {"max_chunk": 1}]
)
def test_bad_induction_options(kwargs) -> None:
    with pytest.raises(ConfigError, match="induction"):
        InductionConfig(**kwargs)


def test_no_utterances_is_an_error() -> None:
    with pytest.raises(ConfigError, match="at least one golden utterance"):
        induce_grammar([])


@needs_snips()
def test_snips_sixty_utterances_give_a_large_grammar() -> None:
    from trustml.synth.formats import load_utterances

    golden = load_utterances(SNIPS_DIR / "train_PlayMusic.json")[:60]
    grammar, _ = induce_grammar(golden)
    stats = grammar.stats()["total"]
    assert stats["rules"] >= 100
    assert GrammarFst(grammar).count()["PlayMusic"] >= 1000


def test_operation_deltas_match_the_posterior_change(toy) -> None:
    from trustml.synth.induction import _Inducer

    inducer = _Inducer([u for u in toy if u.intent == "PlayMusic"], InductionConfig(prior_weight=1.5))
    state = inducer.state
    checked = 0
    for _ in range(4):
        candidates = inducer._candidates(state)
        for delta, _, op in candidates:
            after = inducer._apply(state, op)
            assert inducer.score(after) - inducer.score(state) == pytest.approx(delta, abs=1e-6), op
            checked += 1
        state = inducer._apply(state, candidates[0][2])
    assert checked > 10


def _check_incremental_scores(utterances) -> tuple[int, int]:
    """Run the greedy search on ``utterances``, checking after every step that each cached merge score equals the
    from-scratch ``_merge_delta`` and that each applied merge changes the posterior by its predicted amount;
    return (scores checked, merges applied)."""
    from trustml.synth.induction import _Budget, _Greedy, _Inducer

    checked, merges = 0, 0
    for intent in sorted({u.intent for u in utterances}):
        inducer = _Inducer([u for u in utterances if u.intent == intent], InductionConfig(prior_weight=1.5))
        greedy = _Greedy(inducer, _Budget(0, 0))
        checked += _checked_run(inducer, greedy)
        merges += greedy.merges
    return checked, merges


def _checked_run(inducer, greedy) -> int:
    from collections import defaultdict

    from trustml.synth.induction import _NT, _Reachability, _State

    checked = 0
    rescore, apply_merge = greedy._rescore, greedy._apply_merge

    def check_all() -> None:
        nonlocal checked
        rescore()
        state = _State({lhs: dict(rs) for lhs, rs in greedy.rules.items()})
        parents = defaultdict(list)
        for lhs, rs in state.rules.items():
            for rhs in rs:
                for sym in set(rhs):
                    if inducer.kinds[sym] == _NT:
                        parents[sym].append(lhs)
        reach = _Reachability(state.rules)
        for (a, b), k in greedy.slot.items():
            if not (reach.reaches(a, b) or reach.reaches(b, a)):
                cached = greedy.d_ll[k] - greedy._global(greedy.d_units[k], -1)
                assert cached == pytest.approx(inducer._merge_delta(state, parents, a, b), abs=1e-6)
                checked += 1

    def checked_merge(a: int, b: int) -> None:
        k = greedy.slot[(min(a, b), max(a, b))]
        predicted = greedy.d_ll[k] - greedy._global(greedy.d_units[k], -1)
        before = greedy.score()
        apply_merge(a, b)
        assert greedy.score() - before == pytest.approx(predicted, abs=1e-6)

    greedy._rescore, greedy._apply_merge = check_all, checked_merge
    greedy.run()
    assert greedy.stopped == "converged"
    return checked


def test_incremental_greedy_scores_equal_the_reference_at_every_step(toy) -> None:
    """The greedy search caches each candidate merge's score change and re-scores only what an operation touched
    (see ``_Greedy``): the cache must never go stale."""
    checked, merges = _check_incremental_scores(toy)
    assert checked > 0 and merges > 0


@needs_snips()
def test_incremental_greedy_scores_on_snips_utterances() -> None:
    from trustml.synth.formats import load_utterances
    from trustml.synth.synthesis import select_golden

    pool = [u for i in ("PlayMusic", "GetWeather") for u in load_utterances(SNIPS_DIR / f"train_{i}.json")]
    checked, merges = _check_incremental_scores(select_golden(pool, 40, seed=1))
    assert checked > 500 and merges > 5


def test_budgets_and_stops_keep_a_valid_grammar(toy) -> None:
    _, traces = induce_grammar(toy, InductionConfig(prior_weight=1.5))
    assert {t.stopped for t in traces} == {"converged"}
    timed, traces = induce_grammar(toy, InductionConfig(prior_weight=1.5, time_budget_s=1e-9))
    assert {t.stopped for t in traces} == {"time_budget"} and all(t.merges + t.chunks == 0 for t in traces)
    assert timed.intents["PlayMusic"].templates() == 8  # the grammar of the data, unmerged: still every utterance
    _, traces = induce_grammar(toy, InductionConfig(prior_weight=1.5, memory_budget_mb=1))
    assert {t.stopped for t in traces} == {"memory_budget"}
    coarse, traces = induce_grammar(toy, InductionConfig(prior_weight=1.5, min_gain=5.0))
    steps = sum(t.merges + t.chunks for t in traces)
    assert 0 < steps < sum(t.merges + t.chunks for t in induce_grammar(toy, InductionConfig(prior_weight=1.5))[1])


@pytest.mark.parametrize("kwargs", [{"min_gain": -1.0}, {"memory_budget_mb": -1}, {"time_budget_s": -1}])
def test_bad_stop_options(kwargs) -> None:
    with pytest.raises(ConfigError, match="induction.min_gain, induction.time_budget_s"):
        InductionConfig(**kwargs)


def test_progress_bar_reports_merges_rules_and_score(toy, capsys) -> None:
    induce_grammar(toy, InductionConfig(prior_weight=1.5), progress=True)
    err = capsys.readouterr().err
    assert "induce PlayMusic (8 utterances)" in err
    assert "merges=" in err and "rules=" in err and "score=" in err
