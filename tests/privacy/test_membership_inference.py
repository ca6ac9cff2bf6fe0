"""Membership-inference attacks and metrics on synthetic losses and logits with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from trustml.privacy.audit.membership import (
    lira_offline_scores,
    logit_scaled_confidence,
    loss_attack_scores,
    shadow_in_masks,
)
from trustml.privacy.audit.metrics import attack_metrics, plot_roc, roc, tpr_at_fpr


def test_metrics_on_a_hand_computed_ranking() -> None:
    # members score 4 and 2, non-members 3 and 1: 3 of the 4 member/non-member pairs are ordered right
    metrics = attack_metrics([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0])
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["tpr@1%fpr"] == pytest.approx(0.5)  # threshold 4: one member, no non-member
    assert metrics["tpr@0.1%fpr"] == pytest.approx(0.5)


def test_tpr_at_fpr_takes_the_best_threshold_within_the_fpr() -> None:
    curve = (np.array([0.0, 0.0005, 0.008, 0.02, 1.0]), np.array([0.0, 0.1, 0.3, 0.6, 1.0]))
    assert tpr_at_fpr(curve, 0.01) == pytest.approx(0.3)
    assert tpr_at_fpr(curve, 0.001) == pytest.approx(0.1)
    assert tpr_at_fpr((np.array([0.5, 1.0]), np.array([0.7, 1.0])), 0.01) == 0.0


def test_loss_attack_separates_lower_member_losses() -> None:
    rng = np.random.default_rng(0)
    members, non_members = rng.exponential(0.05, 5000), rng.exponential(1.0, 5000) + 0.5
    labels = np.r_[np.ones(5000), np.zeros(5000)]
    metrics = attack_metrics(loss_attack_scores(np.r_[members, non_members]), labels)
    assert metrics["auc"] > 0.999 and metrics["tpr@0.1%fpr"] > 0.99

    same = rng.exponential(1.0, 10000)  # no leakage: members and non-members alike
    chance = attack_metrics(loss_attack_scores(same), labels)
    assert abs(chance["auc"] - 0.5) < 0.03
    assert chance["tpr@1%fpr"] < 0.03


def test_metrics_refuse_bad_inputs() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        attack_metrics([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        attack_metrics([1.0, 2.0, 3.0], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        attack_metrics([1.0, float("nan")], [1, 0])


def test_roc_plot_is_a_png(tmp_path) -> None:
    curve = roc([3.0, 2.0, 1.0, 0.5], [1, 1, 0, 0])
    path = plot_roc({"loss": curve}, tmp_path / "plots" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logit_scaled_confidence_is_the_log_odds_of_the_true_class() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [300.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 0])
    p = torch.softmax(logits.double(), -1).gather(1, labels[:, None]).squeeze(1)
    phi = logit_scaled_confidence(logits, labels)
    torch.testing.assert_close(phi[:2].double(), torch.log(p[:2] / (1 - p[:2])), rtol=1e-5, atol=1e-5)
    assert phi[2] == pytest.approx(300.0 - np.log(2.0))  # stable where p rounds to 1


def test_shadow_masks_put_every_example_in_half_of_the_models() -> None:
    masks = shadow_in_masks(num_examples=1000, num_shadow=8, seed=0)
    assert masks.shape == (8, 1000)
    assert (masks.sum(0) == 4).all()
    assert (np.abs(masks.sum(1) - 500) < 60).all()
    assert not (masks[0] == masks[1]).all()
    with pytest.raises(ValueError, match="at least 2"):
        shadow_in_masks(10, 1)


def test_lira_score_is_the_out_gaussian_log_cdf() -> None:
    shadow = np.array([[0.0, 10.0], [2.0, 14.0], [4.0, 12.0], [9.0, 9.0]])
    shadow_in = np.array([[False, False], [False, False], [False, False], [True, True]])  # last model: "in"
    target = np.array([3.0, 8.0])
    scores = lira_offline_scores(target, shadow, shadow_in)
    expected = norm.logcdf(target, loc=[2.0, 12.0], scale=[2.0, 2.0])  # mean and sample std of the 3 outs
    np.testing.assert_allclose(scores, expected)


def test_lira_beats_the_loss_threshold_when_examples_differ_in_difficulty() -> None:
    rng = np.random.default_rng(1)
    n, k = 4000, 16
    difficulty = rng.normal(0.0, 4.0, n)  # per-example confidence level without training on it
    shadow_in = shadow_in_masks(n, k, seed=2)
    shadow = difficulty + rng.normal(0.0, 0.5, (k, n)) + 1.5 * shadow_in  # training on x raises its confidence
    is_member = rng.random(n) < 0.5
    target = difficulty + rng.normal(0.0, 0.5, n) + 1.5 * is_member

    lira = attack_metrics(lira_offline_scores(target, shadow, shadow_in), is_member)
    pooled = attack_metrics(lira_offline_scores(target, shadow, shadow_in, fix_variance=True), is_member)
    global_threshold = attack_metrics(target, is_member)

    assert lira["auc"] > 0.9 and lira["tpr@1%fpr"] > 0.2
    assert pooled["auc"] > 0.9
    assert global_threshold["auc"] < 0.7 and global_threshold["tpr@1%fpr"] < 0.05


def test_lira_needs_two_out_models_per_example() -> None:
    with pytest.raises(ValueError, match="fewer than 2 shadow models"):
        lira_offline_scores(np.zeros(2), np.zeros((2, 2)), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="shapes differ"):
        lira_offline_scores(np.zeros(3), np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))
