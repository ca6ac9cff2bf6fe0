"""Canary insertion and exposure (The Secret Sharer) with known ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustml.privacy.audit.canary import (
    candidate_secrets,
    exposure,
    format_canary,
    insert_canary,
    random_secret,
    sample_other_secrets,
    sampled_exposure,
    score_candidates,
    secret_at,
    secret_index,
)


def test_a_secret_ranked_first_has_maximal_exposure() -> None:
    losses = np.linspace(1.0, 2.0, 10_000)
    result = exposure(losses, secret_index=0)
    assert result.rank == 1 and result.ranks_first
    assert result.exposure == pytest.approx(math.log2(10_000))


def test_exposure_is_log_candidates_minus_log_rank() -> None:
    losses = np.arange(1024, dtype=float)  # secret at loss 255 has 255 candidates below it: rank 256
    result = exposure(losses, secret_index=255)
    assert result.rank == 256 and not result.ranks_first
    assert result.exposure == pytest.approx(10 - 8)


def test_ties_count_against_the_secret() -> None:
    result = exposure(np.ones(64), secret_index=5)  # a model that cannot tell candidates apart
    assert result.rank == 64 and result.exposure == 0.0 and not result.ranks_first


def test_secret_index_outside_the_candidates_is_refused() -> None:
    with pytest.raises(IndexError, match="outside the 3 candidates"):
        exposure([1.0, 2.0, 3.0], secret_index=3)


def test_candidates_cover_the_secret_space() -> None:
    candidates = candidate_secrets(4)
    assert len(candidates) == 10_000 and len(set(candidates)) == 10_000
    secret = random_secret(4, seed=9)
    assert secret in candidates and secret == random_secret(4, seed=9)
    assert format_canary(("4", "7", "1", "9")) == "my pin code is 4 7 1 9"


def test_insertion_adds_the_canary_repetitions_and_keeps_the_data_order() -> None:
    records = [f"line {i}" for i in range(50)]
    augmented = insert_canary(records, "my pin code is 1 2 3 4", repetitions=7, seed=0)
    assert len(augmented) == 57 and augmented.count("my pin code is 1 2 3 4") == 7
    assert [r for r in augmented if r.startswith("line")] == records
    assert insert_canary(records, "c", repetitions=0) == records
    with pytest.raises(ValueError, match="non-negative"):
        insert_canary(records, "c", repetitions=-1)


def test_a_model_that_memorized_the_canary_ranks_it_first() -> None:
    secret = ("4", "7", "1", "9")
    sentences = [format_canary(c) for c in candidate_secrets(4)]

    def memorizing_loss(batch: list[str]) -> torch.Tensor:  # loss grows with the distance to the secret
        return torch.tensor([sum(a != b for a, b in zip(s[-7::2], secret, strict=True)) + 0.5 for s in batch])

    losses = score_candidates(memorizing_loss, sentences, batch_size=1000)
    result = exposure(losses.numpy(), sentences.index(format_canary(secret)))
    assert losses.shape == (10_000,)
    assert result.ranks_first and result.exposure == pytest.approx(math.log2(10_000))


def test_secret_index_follows_the_candidate_order() -> None:
    secrets = candidate_secrets(3, "abc")
    assert [secret_at(i, 3, "abc") for i in range(len(secrets))] == secrets
    assert [secret_index(s, "abc") for s in secrets] == list(range(27))


def test_sampled_candidates_are_distinct_uniform_and_never_the_secret() -> None:
    secret = ("0", "0", "0", "3")
    sample = sample_other_secrets(secret, 9_999, seed=1)  # every other candidate
    assert sorted(sample) == [s for s in candidate_secrets(4) if s != secret]
    draws = [s for seed in range(200) for s in sample_other_secrets(secret, 5, seed=seed)]
    first_digits = np.bincount([int(s[0]) for s in draws], minlength=10)
    assert first_digits.min() > 50 and first_digits.max() < 150  # 100 expected per digit
    with pytest.raises(ValueError, match="1 to 9999"):
        sample_other_secrets(secret, 10_000)


def test_sampled_exposure_is_exact_on_the_whole_space_and_covers_the_rank_on_samples() -> None:
    rng = np.random.default_rng(0)
    losses = rng.normal(size=10_000)
    secret = 1234
    true = exposure(losses, secret)
    others = np.delete(losses, secret)
    whole = sampled_exposure(losses[secret], others, 10_000)
    assert whole.rank == pytest.approx(true.rank) and whole.exposure == pytest.approx(true.exposure)
    assert whole.sampled_at_or_below == true.rank - 1
    covered = 0
    for seed in range(100):
        drawn = np.random.default_rng(seed).choice(others, size=500, replace=False)
        estimate = sampled_exposure(losses[secret], drawn, 10_000)
        assert estimate.rank == 1 + 9_999 * estimate.sampled_at_or_below / 500
        assert estimate.rank_low <= estimate.rank <= estimate.rank_high
        covered += estimate.rank_low <= true.rank <= estimate.rank_high
    assert covered >= 90  # a 95% interval
    assert abs(np.log2(estimate.rank / true.rank)) < 0.5
    with pytest.raises(ValueError, match="1 to 9999"):
        sampled_exposure(0.0, losses, 10_000)
