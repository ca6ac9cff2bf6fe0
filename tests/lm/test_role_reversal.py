"""The role-reversal modification of a teacher's next-token distribution and the sparse distillation loss, against
hand computations on a toy vocabulary ``[x, he, she, y, his, her]``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trustml.losses.role_reversal import (
    distillation_token_loss,
    pair_permutation,
    role_reversal_log_probs,
    sparse_kl,
    swap_tokens,
    top_k_targets,
)

HE, SHE, HIS, HER = 1, 2, 4, 5
PAIRS = [(HE, SHE), (HIS, HER)]
GENDERED = torch.tensor([HE, SHE, HIS, HER])
# teacher on the original context ("the nurse said that") and on its counterfactual (identical: no gendered word)
P = torch.tensor([0.10, 0.10, 0.50, 0.10, 0.05, 0.15])
P_CF = torch.tensor([0.10, 0.40, 0.20, 0.10, 0.15, 0.05])


def q_of(mode: str) -> torch.Tensor:
    sigma = pair_permutation(6, PAIRS)
    return role_reversal_log_probs(P.log(), P_CF.log(), GENDERED, sigma, mode).exp()


def test_pair_permutation_swaps_pairs_and_fixes_the_rest() -> None:
    sigma = pair_permutation(6, PAIRS)
    assert sigma.tolist() == [0, 2, 1, 3, 5, 4]
    ids = torch.tensor([[0, 1, 3, 4], [2, 5, 5, 0]])
    assert swap_tokens(ids, sigma).tolist() == [[0, 2, 3, 5], [1, 4, 4, 0]]
    with pytest.raises(ValueError, match="one pair only"):
        pair_permutation(6, [(1, 2), (2, 3)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pair_permutation(3, [(1, 7)])


def test_mean_by_hand() -> None:
    # q(he) = (p(he|x) + p(she|x'))/2 = (0.10 + 0.20)/2 = 0.15; q(she) = (0.50 + 0.40)/2 = 0.45
    # q(his) = (0.05 + 0.05)/2 = 0.05; q(her) = (0.15 + 0.15)/2 = 0.15; others unchanged; sum = 1.0
    expected = torch.tensor([0.10, 0.15, 0.45, 0.10, 0.05, 0.15])
    torch.testing.assert_close(q_of("mean"), expected)


def test_max_and_geometric_by_hand_are_renormalised() -> None:
    raw_max = torch.tensor([0.10, 0.20, 0.50, 0.10, 0.05, 0.15])  # max(0.1,0.2), max(0.5,0.4), ...
    torch.testing.assert_close(q_of("max"), raw_max / raw_max.sum())
    geo = [0.10, math.sqrt(0.10 * 0.20), math.sqrt(0.50 * 0.40), 0.10, math.sqrt(0.05 * 0.05), math.sqrt(0.15 * 0.15)]
    raw_geo = torch.tensor(geo)
    torch.testing.assert_close(q_of("geometric"), raw_geo / raw_geo.sum())
    torch.testing.assert_close(q_of("none"), P)


def test_identical_contexts_give_pairs_equal_probability_under_mean() -> None:
    """With a context that names no one (x' = x), mean gives w and w' the same probability: the bias is removed."""
    sigma = pair_permutation(6, PAIRS)
    q = role_reversal_log_probs(P.log(), P.log(), GENDERED, sigma, "mean").exp()
    assert q[HE] == pytest.approx(q[SHE]) and q[HIS] == pytest.approx(q[HER])
    assert q[HE] == pytest.approx((0.10 + 0.50) / 2)


def test_batched_over_positions() -> None:
    sigma = pair_permutation(6, PAIRS)
    log_p = torch.stack([P, P_CF]).log().unsqueeze(0)  # [1, 2, V]
    log_p_cf = torch.stack([P_CF, P]).log().unsqueeze(0)
    q = role_reversal_log_probs(log_p, log_p_cf, GENDERED, sigma, "mean").exp()
    torch.testing.assert_close(q[0, 0], q_of("mean"))
    assert q.shape == (1, 2, 6) and torch.allclose(q.sum(-1), torch.ones(1, 2))


def test_sparse_kl_is_the_full_kl_with_every_token_and_a_lower_bound_with_fewer() -> None:
    torch.manual_seed(0)
    student = torch.randn(3, 4, 6)
    teacher = F.log_softmax(torch.randn(3, 4, 6) * 2, dim=-1)
    full = (teacher.exp() * (teacher - F.log_softmax(student, dim=-1))).sum(-1)
    ids, values = top_k_targets(teacher, 6)
    torch.testing.assert_close(sparse_kl(student, ids, values), full, atol=1e-5, rtol=1e-5)
    ids, values = top_k_targets(teacher, 2)
    coarse = sparse_kl(student, ids, values)
    assert (coarse <= full + 1e-6).all() and (coarse >= -1e-6).all()
    # by hand for one position: q over {top-2, rest}, p over the same three buckets
    q, p = teacher[0, 0].exp(), F.softmax(student[0, 0], dim=-1)
    top = ids[0, 0]
    q_rest, p_rest = 1 - q[top].sum(), 1 - p[top].sum()
    by_hand = (q[top] * (q[top] / p[top]).log()).sum() + q_rest * (q_rest / p_rest).log()
    assert coarse[0, 0] == pytest.approx(float(by_hand), abs=1e-5)


def test_distillation_loss_scales_kl_by_t_squared_and_adds_the_hard_label_term() -> None:
    torch.manual_seed(1)
    student = torch.randn(2, 3, 6)
    labels = torch.tensor([[1, 2, -100], [0, 5, 4]])
    temperature = 2.0
    teacher = F.log_softmax(torch.randn(2, 3, 6) / temperature, dim=-1)
    ids, values = top_k_targets(teacher, 6)
    loss, mask = distillation_token_loss(student, labels, ids, values, temperature, 0.7, 0.3)
    kl = (teacher.exp() * (teacher - F.log_softmax(student / temperature, dim=-1))).sum(-1)
    ce = F.cross_entropy(student.transpose(1, 2), labels.clamp(min=0), reduction="none")
    expected = (0.7 * temperature**2 * kl + 0.3 * ce).masked_fill(labels == -100, 0.0)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
