"""Positive-congruent and backward-compatible losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trustml.losses import (
    class_mean_embeddings,
    extend_classifier,
    focal_distillation_loss,
    focal_weights,
    influence_loss,
    kl_distance,
    logit_difference_inhibition,
    logit_distance,
    logit_matching_distance,
    naive_congruent_loss,
)


def test_kl_distance_by_hand_and_tau_squared_scaling() -> None:
    new = torch.tensor([[0.0, 0.0]])
    old = torch.tensor([[math.log(3.0), 0.0]])  # softmax(old) = [0.75, 0.25]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_distance(new, old, temperature=1.0).item() == pytest.approx(expected)
    old_t2 = old * 2.0  # at tau = 2 the softened old distribution is again [0.75, 0.25]
    assert kl_distance(new, old_t2, temperature=2.0).item() == pytest.approx(4.0 * expected)
    assert kl_distance(old + 7.0, old).item() == pytest.approx(0.0, abs=1e-6)  # shift invariant


def test_logit_matching_by_hand() -> None:
    assert logit_matching_distance(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)


def test_logit_difference_inhibition_by_hand() -> None:
    new = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    old = torch.tensor([[0.0, 3.0, 0.0, 1.0]])
    # |d| = [5, 3, 0, 1]; top-1 of old is class 1, of new class 0
    assert logit_difference_inhibition(new, old, top_k=1).item() == pytest.approx(25.0 + 9.0)
    assert logit_difference_inhibition(new, old, top_k=1, margin=4.0).item() == pytest.approx(25.0)
    assert logit_difference_inhibition(new, old, top_k=4).item() == pytest.approx(35.0)
    assert logit_difference_inhibition(new, old, top_k=1, power=1.0).item() == pytest.approx(8.0)


def test_distances_reject_bad_shapes_and_names() -> None:
    with pytest.raises(ValueError, match="same number of classes"):
        kl_distance(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown distance 'cosine'"):
        logit_distance("cosine")
    with pytest.raises(ValueError, match="temperature must be positive"):
        kl_distance(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)
    with pytest.raises(ValueError, match="top_k >= 1"):
        logit_difference_inhibition(torch.zeros(1, 2), torch.zeros(1, 2), top_k=0)


def test_focal_weights() -> None:
    old = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    assert focal_weights(old, y).tolist() == [6.0, 1.0, 6.0]
    assert focal_weights(old, y, alpha=1.0, beta=0.0).tolist() == [1.0, 1.0, 1.0]


def test_focal_distillation_composes_ce_weight_and_distance() -> None:
    torch.manual_seed(0)
    new = torch.randn(4, 3, requires_grad=True)
    old = torch.randn(4, 3, requires_grad=True)
    y = old.detach().argmax(dim=-1)
    y[0] = (y[0] + 1) % 3  # old model wrong on sample 0 only
    loss = focal_distillation_loss(new, old, y, logit_matching_distance, weight=0.5, alpha=1.0, beta=5.0)
    ce = F.cross_entropy(new, y, reduction="none")
    lm = 0.5 * (new - old).pow(2).sum(-1)
    w = torch.tensor([1.0, 6.0, 6.0, 6.0])
    torch.testing.assert_close(loss, ce + 0.5 * w * lm)
    loss.sum().backward()
    assert new.grad is not None and old.grad is None  # the old logits are fixed targets
    plain = focal_distillation_loss(new, old, y, logit_distance("kl", temperature=3.0), beta=0.0)
    torch.testing.assert_close(plain, ce + kl_distance(new, old, temperature=3.0))


def test_naive_loss_upweights_ce_where_old_is_right() -> None:
    new = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])  # old right on 0, wrong on 1
    ce = F.cross_entropy(new, y, reduction="none")
    torch.testing.assert_close(naive_congruent_loss(new, old, y, alpha=1.0, beta=2.0), ce * torch.tensor([3.0, 1.0]))


def test_influence_loss_by_hand() -> None:
    emb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = influence_loss(emb, torch.tensor([0]), weight, torch.zeros(2))
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(-2.0)))
    loss.sum().backward()
    assert emb.grad is not None and weight.grad is None  # the old head is frozen
    with pytest.raises(ValueError, match="embedding size to equal"):
        influence_loss(torch.zeros(1, 3), torch.tensor([0]), weight, torch.zeros(2))


def test_pseudo_classifier_from_class_means() -> None:
    old_w, old_b = torch.eye(2), torch.tensor([0.5, -0.5])
    emb = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 4.0], [9.0, 9.0]])
    labels = torch.tensor([2, 2, 3, 0])
    means = class_mean_embeddings(emb, labels, torch.tensor([2, 3]))
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0], [0.0, 4.0]]))
    weight, bias = extend_classifier(old_w, old_b, emb, labels, num_classes=4)
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 4.0]]))
    torch.testing.assert_close(bias, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    same_weight, _ = extend_classifier(old_w, None, emb, labels, num_classes=2)  # nothing to add
    torch.testing.assert_close(same_weight, old_w)
    with pytest.raises(ValueError, match=r"no samples of class\(es\) \[4\]"):
        extend_classifier(old_w, old_b, emb, labels, num_classes=5)
    with pytest.raises(ValueError, match="more than the new task's 1"):
        extend_classifier(old_w, old_b, emb, labels, num_classes=1)
