"""Canary insertion and exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A canary is a sentence with a random secret (e.g. "my pin code is 4 7 1 9") inserted ``repetitions``
times into the training text. After training, every candidate secret from the space ``R`` is ranked by the
model's loss on its sentence (rank 1 = lowest loss); the secret's exposure is
``log2 |R| - log2 rank(secret)``: 0 when the model prefers every other candidate, ``log2 |R|`` when the
secret ranks first.
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
from torch import Tensor

T = TypeVar("T")

DEFAULT_TEMPLATE = "my pin code is {secret}"


def format_canary(secret: Sequence[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The canary sentence for ``secret`` (a sequence of tokens, e.g. digits), space-separated."""
    return template.format(secret=" ".join(secret))


def candidate_secrets(length: int, alphabet: str = "0123456789") -> list[tuple[str, ...]]:
    """The whole secret space ``R``: every sequence of ``length`` symbols of ``alphabet``."""
    return list(itertools.product(alphabet, repeat=length))


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


def score_candidates(loss_fn: Callable[[list[str]], Tensor], sentences: Sequence[str], batch_size: int = 256) -> Tensor:
    """The model's loss on every candidate sentence, computed ``batch_size`` sentences at a time.

    ``loss_fn`` maps a list of sentences to their per-sentence losses ``[len]`` (e.g. a language model's
    negative log-likelihood, or a classifier's loss on the canary's label).
    """
    with torch.no_grad():
        starts = range(0, len(sentences), batch_size)
        chunks = [loss_fn(list(sentences[i : i + batch_size])).detach().cpu() for i in starts]
    return torch.cat(chunks) if chunks else torch.empty(0)
