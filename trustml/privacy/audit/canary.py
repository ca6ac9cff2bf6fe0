"""Canary insertion and exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A canary is a sentence with a random secret (e.g. "my pin code is 4 7 1 9") inserted ``repetitions``
times into the training text. After training, every candidate secret from the space ``R`` is ranked by the
model's loss on its sentence (rank 1 = lowest loss); the secret's exposure is
``log2 |R| - log2 rank(secret)``: 0 when the model prefers every other candidate, ``log2 |R|`` when the
secret ranks first. Where ``R`` is too large to score whole, the rank is estimated from a uniform sample of
``R`` (the paper's "approximation by sampling", :func:`sampled_exposure`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import binomtest
from torch import Tensor

T = TypeVar("T")

DEFAULT_TEMPLATE = "my pin code is {secret}"


def format_canary(secret: Sequence[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The canary sentence for ``secret`` (a sequence of tokens, e.g. digits), space-separated."""
    return template.format(secret=" ".join(secret))


def candidate_secrets(length: int, alphabet: str = "0123456789") -> list[tuple[str, ...]]:
    """The whole secret space ``R``: every sequence of ``length`` symbols of ``alphabet``."""
    return list(itertools.product(alphabet, repeat=length))


def secret_at(index: int, length: int, alphabet: str = "0123456789") -> tuple[str, ...]:
    """The ``index``-th secret of :func:`candidate_secrets` (the same order: the first position varies slowest)."""
    symbols = []
    for _ in range(length):
        index, digit = divmod(index, len(alphabet))
        symbols.append(alphabet[digit])
    return tuple(reversed(symbols))


def secret_index(secret: Sequence[str], alphabet: str = "0123456789") -> int:
    """The position of ``secret`` in :func:`candidate_secrets` (inverse of :func:`secret_at`)."""
    index = 0
    for symbol in secret:
        index = index * len(alphabet) + alphabet.index(symbol)
    return index


def sample_other_secrets(
    secret: Sequence[str], num: int, alphabet: str = "0123456789", seed: int = 0
) -> list[tuple[str, ...]]:
    """``num`` distinct secrets drawn uniformly without replacement from ``R`` minus ``secret``."""
    size = len(alphabet) ** len(secret)
    if not 0 < num < size:
        raise ValueError(f"a sample of the {size - 1} other candidates needs 1 to {size - 1} of them, got {num}")
    own = secret_index(secret, alphabet)
    drawn = np.random.default_rng(seed).choice(size - 1, size=num, replace=False)
    # the indices 0..size-2 of the other candidates: skip the secret's own index
    return [secret_at(int(i) + (i >= own), len(secret), alphabet) for i in drawn]


def random_secret(length: int, alphabet: str = "0123456789", seed: int = 0) -> tuple[str, ...]:
    """A uniformly random secret of ``length`` symbols."""
    rng = random.Random(seed)
    return tuple(rng.choice(alphabet) for _ in range(length))


def insert_canary(records: Sequence[T], canary: T, repetitions: int, seed: int = 0) -> list[T]:
    """``records`` with ``repetitions`` copies of ``canary`` inserted at random positions (a new list)."""
    if repetitions < 0:
        raise ValueError(f"canary repetitions must be non-negative, got {repetitions}")
    rng = random.Random(seed)
    augmented = list(records)
    for _ in range(repetitions):
        augmented.insert(rng.randint(0, len(augmented)), canary)
    return augmented


@dataclass(frozen=True)
class Exposure:
    """The secret's rank among all candidates, its exposure in bits, and whether it ranks first."""

    rank: int
    num_candidates: int
    exposure: float
    ranks_first: bool


def exposure(candidate_losses: ArrayLike, secret_index: int) -> Exposure:
    """Exposure of candidate ``secret_index`` given the model's loss on every candidate of ``R``.

    ``rank = 1 + #{other candidates with loss <= the secret's}``: ties count against the secret, so a model
    that cannot tell candidates apart gives exposure 0, never a spurious maximum.
    """
    losses = np.asarray(candidate_losses, dtype=float).ravel()
    if not 0 <= secret_index < losses.size:
        raise IndexError(f"secret index {secret_index} is outside the {losses.size} candidates")
    rank = int((losses <= losses[secret_index]).sum())
    return Exposure(
        rank=rank,
        num_candidates=int(losses.size),
        exposure=math.log2(losses.size) - math.log2(rank),
        ranks_first=rank == 1,
    )


@dataclass(frozen=True)
class SampledExposure:
    """The secret's rank among ``num_candidates`` estimated from ``num_sampled`` uniformly sampled other candidates,
    with its ``confidence`` interval (``rank_low``, ``rank_high``), and the exposure of the estimated rank."""

    rank: float
    rank_low: float
    rank_high: float
    num_candidates: int
    num_sampled: int
    sampled_at_or_below: int
    exposure: float
    confidence: float


def sampled_exposure(
    secret_loss: float, sampled_losses: ArrayLike, num_candidates: int, confidence: float = 0.95
) -> SampledExposure:
    """Exposure estimated by sampling (Carlini et al. 2019, section 4.2): with ``k`` of the ``n`` sampled other
    candidates scoring at or below the secret (ties against it, as in :func:`exposure`), the share ``q = k / n``
    estimates the share of the ``|R| - 1`` other candidates that do, so ``rank = 1 + (|R| - 1) q`` and
    ``exposure = log2 |R| - log2 rank``; the rank's interval comes from the exact (Clopper-Pearson) interval of
    ``q``. ``sampled_losses`` must be drawn uniformly from ``R`` without the secret (:func:`sample_other_secrets`).
    """
    losses = np.asarray(sampled_losses, dtype=float).ravel()
    if losses.size == 0 or losses.size >= num_candidates:
        raise ValueError(f"a sample of 1 to {num_candidates - 1} other candidates is needed, got {losses.size}")
    below = int((losses <= secret_loss).sum())
    interval = binomtest(below, losses.size).proportion_ci(confidence, method="exact")
    others = num_candidates - 1
    rank = 1 + others * below / losses.size
    return SampledExposure(
        rank=rank,
        rank_low=1 + others * interval.low,
        rank_high=1 + others * interval.high,
        num_candidates=num_candidates,
        num_sampled=int(losses.size),
        sampled_at_or_below=below,
        exposure=math.log2(num_candidates) - math.log2(rank),
        confidence=confidence,
    )


def score_candidates(loss_fn: Callable[[list[str]], Tensor], sentences: Sequence[str], batch_size: int = 256) -> Tensor:
    """The model's loss on every candidate sentence, computed ``batch_size`` sentences at a time.

    ``loss_fn`` maps a list of sentences to their per-sentence losses ``[len]`` (e.g. a language model's
    negative log-likelihood, or a classifier's loss on the canary's label).
    """
    with torch.no_grad():
        starts = range(0, len(sentences), batch_size)
        chunks = [loss_fn(list(sentences[i : i + batch_size])).detach().cpu() for i in starts]
    return torch.cat(chunks) if chunks else torch.empty(0)
