"""Group metrics against hand computations; counterfactual swaps, the gender proxy and counterfactual metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from trustml.errors import ConfigError, DataError
from trustml.fairness.counterfactual import (
    counterfactual_metrics,
    counterfactual_texts,
    gender_proxies,
    gender_proxy,
    load_word_pairs,
    swap_protected_words,
)
from trustml.fairness.group_metrics import group_metrics

# ---------------------------------------------------------------- group metrics


def test_binary_group_metrics_by_hand_and_equal_to_fairlearn() -> None:
    y_true = [1, 1, 0, 0, 1, 1, 0, 0]
    y_pred = [1, 0, 0, 0, 1, 1, 1, 0]
    groups = ["a"] * 4 + ["b"] * 4
    report = group_metrics(y_true, y_pred, groups)
    # a: acc 3/4, selection 1/4, TPR 1/2, FPR 0; b: acc 3/4, selection 3/4, TPR 1, FPR 1/2
    assert report.by_group["a"] == {"accuracy": 0.75, "f1_macro": pytest.approx((2 / 3 + 0.8) / 2), "count": 4}
    assert report.by_group["b"]["accuracy"] == 0.75 and report.by_group["b"]["count"] == 4
    assert report.overall["accuracy"] == 0.75 and report.overall["count"] == 8
    assert report.accuracy_difference == 0.0
    assert report.demographic_parity_difference == pytest.approx(0.5)
    assert report.equalized_odds_difference == pytest.approx(0.5)
    assert report.demographic_parity_difference == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
    )
    assert report.equalized_odds_difference == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    )
    assert report.dp_by_class == {"0": pytest.approx(0.5), "1": pytest.approx(0.5)}  # both views agree
    assert report.undefined_rates == []


def test_multiclass_one_vs_rest_max() -> None:
    y_true = ["x0", "x1", "x2", "x0", "x1", "x2"]
    y_pred = ["x0", "x1", "x1", "x0", "x2", "x2"]
    groups = ["g", "g", "g", "h", "h", "h"]
    report = group_metrics(y_true, y_pred, groups)
    # class x0: selection 1/3 vs 1/3, TPR 1 vs 1, FPR 0 vs 0
    # class x1: selection 2/3 vs 0, TPR 1 vs 0, FPR 1/2 vs 0; class x2: selection 0 vs 2/3, TPR 0 vs 1, FPR 0 vs 1/2
    assert report.dp_by_class == {"x0": 0.0, "x1": pytest.approx(2 / 3), "x2": pytest.approx(2 / 3)}
    assert report.eo_by_class == {"x0": 0.0, "x1": 1.0, "x2": 1.0}
    assert report.demographic_parity_difference == pytest.approx(2 / 3)
    assert report.equalized_odds_difference == 1.0
    assert report.by_group["g"]["accuracy"] == pytest.approx(2 / 3)


def test_undefined_rates_are_left_out_not_counted_as_zero() -> None:
    # group a has no true 1 (TPR_1 undefined), group b no true 0 (FPR_1 undefined)
    report = group_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "a", "b", "b"])
    assert report.equalized_odds_difference == 0.0  # Fairlearn would report 1.0, counting TPR_1(a) as 0
    assert len(report.undefined_rates) == 4 and "TPR of class '1' in group 'a'" in report.undefined_rates[2]
    assert report.demographic_parity_difference == pytest.approx(0.5)
    assert all(np.isfinite(v) for v in report.by_group["a"].values())


def test_group_metrics_bad_input() -> None:
    with pytest.raises(DataError, match="single group"):
        group_metrics([0, 1], [0, 1], ["a", "a"])
    with pytest.raises(DataError, match="length mismatch"):
        group_metrics([0, 1, 1], [0, 1], ["a", "b"])
    with pytest.raises(DataError, match="protected attribute has 1 missing"):
        group_metrics([0, 1, 1], [0, 1, 0], ["a", None, "b"])
    with pytest.raises(DataError, match="y_pred has 1 missing"):
        group_metrics([0, 1, 1], np.array([0, np.nan, 0]), ["a", "b", "b"])


# ---------------------------------------------------------------- counterfactual swaps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He said HIS book is his.", "She said HER book is hers."),
        ("I gave her a book; her dog barked at Her.", "I gave him a book; his dog barked at Him."),
        ("JOHN met Mary's mother, Mrs. Smith!", "PATRICIA met James's father, Mr. Smith!"),
        ("She loves him (a lot), and he-man stuff.", "He loves her (a lot), and she-woman stuff."),
        ("Is it his? Yes, it's hers...", "Is it hers? Yes, it's his..."),
        ("The ex-husband and his wife; Ms. Lee.", "The ex-wife and her husband; Mr. Lee."),
        ("a Christmas carol sung by Carol", "a Christmas carol sung by Kevin"),
        ("Theme: the other show", "Theme: the other show"),  # "he" inside words is not a word
    ],
)
def test_swap_keeps_case_punctuation_and_whole_words(text: str, expected: str) -> None:
    result = swap_protected_words(text)
    assert result.text == expected
    assert result.changed == (text != expected)


def test_swap_twice_is_back_for_one_to_one_words() -> None:
    text = "My brother and his girlfriend met Dad's uncle, SIR Robert."
    assert swap_protected_words(swap_protected_words(text).text).text == text


def test_counterfactual_texts_and_proxy() -> None:
    texts = ["set an alarm for me", "call my mom", "tell Robert he is late", "he and she"]
    cf, changed = counterfactual_texts(texts)
    assert cf[1] == "call my dad" and changed.tolist() == [False, True, True, True]
    assert gender_proxies(texts).tolist() == ["none", "female", "male", "both"]
    assert gender_proxy("sing a carol") == "none" and gender_proxy("ask Carol") == "female"


def test_word_pair_file_errors(tmp_path: Path) -> None:
    no_source = tmp_path / "a.yaml"
    no_source.write_text("pairs:\n  - [he, she]\n")
    with pytest.raises(ConfigError, match="source"):
        load_word_pairs(no_source)
    conflict = tmp_path / "b.yaml"
    conflict.write_text("source: test\npairs:\n  - [him, her]\n  - [his, her]\n")
    with pytest.raises(ConfigError, match="'her' is swapped both"):
        load_word_pairs(conflict)
    latin1 = tmp_path / "c.yaml"
    latin1.write_bytes("source: test\npairs:\n  - [garçon, fille]\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"c.yaml:3: not valid utf-8 text.*data.counterfactual_pairs"):
        load_word_pairs(latin1)
    shipped = load_word_pairs()
    assert "Lu et al." in shipped.source and len(shipped.names) >= 100


# ---------------------------------------------------------------- counterfactual metrics


def test_counterfactual_metrics_by_hand() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    q = np.array([[0.3, 0.6, 0.1], [0.3, 0.6, 0.1], [0.0, 0.0, 1.0], [0.1, 0.45, 0.45]])
    report = counterfactual_metrics(p, q, changed=[True, True, False, True])  # row 2 unchanged: left out
    assert (report.n_changed, report.n_flipped, report.n_texts) == (3, 2, 4)
    assert report.flip_rate == pytest.approx(2 / 3)
    assert report.mean_abs_prob_change == pytest.approx((0.4 + 0.0 + 0.8) / 3)
    assert report.mean_total_variation == pytest.approx((0.4 + 0.2 + 0.8) / 3)


def test_counterfactual_metrics_bad_input() -> None:
    p = np.array([[0.5, 0.5]])
    with pytest.raises(DataError, match="no text was changed"):
        counterfactual_metrics(p, p, changed=[False])
    with pytest.raises(DataError, match="same shape"):
        counterfactual_metrics(p, np.array([[0.2, 0.3, 0.5]]))
    with pytest.raises(DataError, match="sum to 1"):
        counterfactual_metrics(np.array([[2.0, -1.0]]), p)
