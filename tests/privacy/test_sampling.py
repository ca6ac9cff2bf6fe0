"""Poisson batch sampling."""

from __future__ import annotations

import pytest
import torch

from trustml.errors import ConfigError
from trustml.privacy.sampling import PoissonBatchSampler


def test_each_index_is_drawn_independently_at_the_sampling_rate() -> None:
    sampler = PoissonBatchSampler(num_samples=1000, sample_rate=0.05, num_batches=400, seed=1)
    counts = torch.zeros(1000)
    sizes = []
    for batch in sampler:
        assert len(set(batch)) == len(batch) and all(0 <= i < 1000 for i in batch)
        counts[batch] += 1
        sizes.append(len(batch))
    assert abs(sum(sizes) / len(sizes) - 50) < 1.5  # mean batch size q N
    assert len(set(sizes)) > 5  # sizes vary (Poisson, not fixed)
    assert abs(float(counts.mean()) / 400 - 0.05) < 0.002


def test_epochs_are_reproducible_and_differ() -> None:
    sampler = PoissonBatchSampler.from_batch_size(num_samples=100, batch_size=10, seed=3)
    assert len(sampler) == 10 and sampler.expected_batch_size == pytest.approx(10)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize(("num_samples", "rate"), [(0, 0.1), (10, 0.0), (10, 1.5)])
def test_bad_sampling_parameters_are_refused(num_samples: int, rate: float) -> None:
    with pytest.raises(ConfigError):
        PoissonBatchSampler(num_samples, rate)


def test_batch_size_larger_than_the_data_samples_everything() -> None:
    sampler = PoissonBatchSampler.from_batch_size(num_samples=10, batch_size=64)
    assert sampler.sample_rate == 1.0 and sampler.expected_batch_size == 10
    assert all(sorted(batch) == list(range(10)) for batch in sampler)
    with pytest.raises(ConfigError, match="positive batch size"):
        PoissonBatchSampler.from_batch_size(num_samples=10, batch_size=0)
