"""Counterfactual role reversal of a teacher's next-token distribution, and distillation towards sparse targets.

Gupta et al. (2022), "Mitigating gender bias in distilled language models via counterfactual role reversal".
A gendered word pair ``(w, w')`` (he/she, actor/actress, ...) is a pair of token ids; ``sigma`` is the
involution of the vocabulary that swaps every pair and fixes every other token (:func:`pair_permutation`). For a
context ``x`` and its counterfactual ``x' = sigma(x)`` (every gendered token swapped, positions unchanged), the
teacher gives ``p(.|x)`` and ``p(.|x')``. The role-reversed target is, for every gendered token ``w`` of the pairs::

    q(w | x) = f( p(w | x), p(sigma(w) | x') ) / Z        and   q(v | x) = p(v | x) / Z   for every other token v

with ``f`` = ``mean`` ((a + b) / 2), ``max`` or ``geometric`` (sqrt(a b)) and ``Z`` the renormalisation over the
vocabulary (``none``: ``q = p``). A context that calls for "she" in ``x`` calls for "he" in ``x'``, so ``q`` gives
both words of a pair the same treatment: ``q(he|x)`` mixes how likely "he" is here with how likely "she" is in the
gender-swapped context. Everything is computed in log space (:func:`role_reversal_log_probs`).

The distillation loss matches the student to a target kept as its top ``K`` tokens (:func:`top_k_targets`, what
the teacher cache stores) plus the mass of all other tokens as one bucket ``r``; it is the KL divergence of the two
distributions coarsened to ``S = top-K`` and ``r`` (:func:`sparse_kl`)::

    KL(q || p_s) = sum_{v in S} q_v (log q_v - log p_v) + q_r (log q_r - log p_r),   p_r = 1 - sum_{v in S} p_v

which equals the full KL when ``K`` is the vocabulary size, and is a lower bound of it otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

COMBINATIONS = ("mean", "max", "geometric", "none")


def pair_permutation(vocab_size: int, pairs: Sequence[tuple[int, int]] | Tensor) -> Tensor:
    """``sigma`` as an index tensor ``[V]``: ``sigma[w] = w'`` and ``sigma[w'] = w`` for each pair, else identity.

    Raises ``ValueError`` when a token is in two pairs or paired with itself (``sigma`` must be an involution).
    """
    sigma = torch.arange(vocab_size)
    seen: set[int] = set()
    for a, b in (tuple(map(int, p)) for p in pairs):
        if a == b or a in seen or b in seen:
            raise ValueError(f"token pair ({a}, {b}) repeats a token: each token may be in one pair only")
        if not (0 <= a < vocab_size and 0 <= b < vocab_size):
            raise ValueError(f"token pair ({a}, {b}) lies outside the vocabulary of {vocab_size}")
        seen |= {a, b}
        sigma[a], sigma[b] = b, a
    return sigma


def swap_tokens(input_ids: Tensor, sigma: Tensor) -> Tensor:
    """The counterfactual token sequence ``sigma(x)`` (same shape; gendered tokens swapped, others unchanged)."""
    return sigma.to(input_ids.device)[input_ids]


def combine_log_probs(a: Tensor, b: Tensor, mode: str) -> Tensor:
    """``log f(exp a, exp b)`` elementwise: mean ``log((e^a + e^b)/2)``, max, geometric ``(a + b)/2``."""
    if mode == "mean":
        return torch.logaddexp(a, b) - math.log(2.0)
    if mode == "max":
        return torch.maximum(a, b)
    if mode == "geometric":
        return 0.5 * (a + b)
    raise ValueError(f"unknown combination {mode!r}; use one of {COMBINATIONS}")


def role_reversal_log_probs(log_p: Tensor, log_p_cf: Tensor, gendered: Tensor, sigma: Tensor, mode: str) -> Tensor:
    """``log q`` ``[..., V]`` (module doc) from the teacher's log-probabilities on the original context ``log_p``
    and on the counterfactual context ``log_p_cf`` (same shape, same positions).

    ``gendered`` ``[G]``: the token ids of every word of the pairs; ``sigma`` ``[V]``: :func:`pair_permutation`.
    ``mode='none'`` returns ``log_p`` unchanged.
    """
    if mode == "none":
        return log_p
    if mode not in COMBINATIONS:
        raise ValueError(f"unknown combination {mode!r}; use one of {COMBINATIONS}")
    gendered = gendered.to(log_p.device)
    counterpart = sigma.to(log_p.device)[gendered]
    combined = combine_log_probs(log_p[..., gendered], log_p_cf[..., counterpart], mode)
    log_q = log_p.clone()
    log_q[..., gendered] = combined
    return log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)


def top_k_targets(log_q: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` most probable tokens of ``log_q`` ``[..., V]``: ids ``[..., k]`` and their log-probabilities."""
    k = min(k, log_q.shape[-1])
    values, ids = torch.topk(log_q, k, dim=-1)
    return ids, values


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable (Maechler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _coarse_kl(log_p_s: Tensor, target_log_q: Tensor) -> Tensor:
    """The coarsened KL from the student's log-probabilities of the kept tokens ``log_p_s`` ``[..., K]``."""
    log_q_s = target_log_q.float()
    kl = (log_q_s.exp() * (log_q_s - log_p_s)).sum(-1)
    log_q_rest = _log1mexp(torch.logsumexp(log_q_s, dim=-1))
    log_p_rest = _log1mexp(torch.logsumexp(log_p_s, dim=-1))
    q_rest = log_q_rest.exp()
    rest = torch.where(q_rest > 1e-7, q_rest * (log_q_rest - log_p_rest), torch.zeros_like(q_rest))
    return kl + rest


def sparse_kl(student_logits: Tensor, target_ids: Tensor, target_log_q: Tensor, temperature: float = 1.0) -> Tensor:
    """KL of the coarsened distributions (module doc) per position, ``[...]``.

    ``student_logits`` ``[..., V]`` (divided by ``temperature`` before the softmax); ``target_ids`` /
    ``target_log_q`` ``[..., K]`` the target's kept tokens and log-probabilities (at the same temperature).
    """
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return _coarse_kl(log_p.gather(-1, target_ids.long()), target_log_q)


def distillation_token_loss(
    student_logits: Tensor,
    labels: Tensor,
    target_ids: Tensor,
    target_log_q: Tensor,
    temperature: float,
    kl_weight: float,
    hard_weight: float,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """Per-token loss ``[B, T]`` ``kl_weight * T^2 * KL_T(q || p_s) + hard_weight * CE(p_s, y)`` (Hinton et al.
    2015; 0 at ``ignore_index``), and the mask of counted tokens."""
    mask = labels != ignore_index
    logits = student_logits.float()
    log_p = F.log_softmax(logits, dim=-1)  # one softmax over the vocabulary serves both terms at T = 1
    loss = torch.zeros(labels.shape, device=student_logits.device)
    if kl_weight:
        log_p_t = log_p if temperature == 1.0 else F.log_softmax(logits / temperature, dim=-1)
        loss = loss + kl_weight * temperature**2 * _coarse_kl(log_p_t.gather(-1, target_ids.long()), target_log_q)
    if hard_weight:
        ce = -log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        loss = loss + hard_weight * ce
    return loss.masked_fill(~mask, 0.0), mask
