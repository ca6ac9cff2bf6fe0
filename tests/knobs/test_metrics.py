"""Response metrics as pure functions."""

from __future__ import annotations

import math

import pytest
import torch

from trustml.errors import ConfigError
from trustml.knobs.metrics import (
    distinct_n,
    knowledge_f1,
    mean_length,
    normalized_tokens,
    perplexity,
    question_ratio,
    reference_f1,
    response_metrics,
    unigram_f1,
)


def test_normalization_drops_case_punctuation_and_articles():
    assert normalized_tokens("The Eiffel tower, in Paris!") == ["eiffel", "tower", "in", "paris"]


def test_unigram_f1():
    assert unigram_f1("the tower is tall", "a tower is very tall") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert unigram_f1("", "tower") == 0.0
    assert unigram_f1("cats", "dogs") == 0.0
    assert unigram_f1("tower tower", "tower") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap


def test_corpus_f1s_average_pairs():
    responses = ["paris is nice", "i like jazz"]
    assert knowledge_f1(responses, ["paris is in france", "jazz began in new orleans"]) == pytest.approx(
        (unigram_f1(responses[0], "paris is in france") + unigram_f1(responses[1], "jazz began in new orleans")) / 2
    )
    assert reference_f1(responses, responses) == 1.0
    with pytest.raises(ConfigError, match="pair one to one"):
        reference_f1(responses, ["x"])
    with pytest.raises(ConfigError, match="no responses"):
        knowledge_f1([], [])


def test_question_ratio_distinct_and_length():
    responses = ["do you like it?", "i do like it", "really? yes"]
    assert question_ratio(responses) == pytest.approx(2 / 3)
    assert distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a"], 2) == 0.0
    assert mean_length(responses) == pytest.approx(10 / 3)
    with pytest.raises(ConfigError):
        distinct_n(responses, 0)
    with pytest.raises(ConfigError):
        question_ratio([])


def test_perplexity_is_exp_of_mean_nll_over_real_tokens():
    nll = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert perplexity(nll, mask) == pytest.approx(math.exp(2.0))
    with pytest.raises(ConfigError):
        perplexity(nll, torch.zeros_like(mask))


def test_response_metrics_has_every_metric():
    metrics = response_metrics(["paris?"], ["paris"], ["paris is in france"])
    assert set(metrics) == {"knowledge_f1", "reference_f1", "question_ratio", "distinct_1", "distinct_2", "length"}
    assert metrics["question_ratio"] == 1.0 and metrics["reference_f1"] == 1.0
