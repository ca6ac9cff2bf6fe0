"""Poisson batch sampling."""

from __future__ import annotations

import pytest
import torch

from trustml.errors import ConfigError
from trustml.privacy.sampling import PoissonBatchSampler, PoissonSamplerFactory


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


def test_successive_passes_draw_fresh_batches_and_epochs_are_reproducible() -> None:
    sampler = PoissonBatchSampler.from_batch_size(num_samples=100, batch_size=10, seed=3)
    assert len(sampler) == 10 and sampler.expected_batch_size == pytest.approx(10)
    first, second = list(sampler), list(sampler)  # nobody calls set_epoch: the pass advances the stream
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first and list(sampler) == second
    sampler.set_epoch(1)
    assert list(sampler) == second


def test_the_factory_gives_every_loader_its_own_reproducible_stream() -> None:
    factory = PoissonSamplerFactory(seed=5)
    samplers = [factory(100, 10) for _ in range(3)]  # e.g. one device's loader in three rounds
    draws = [list(s) for s in samplers]
    assert draws[0] != draws[1] != draws[2] != draws[0]
    again = PoissonSamplerFactory(seed=5)
    assert [list(again(100, 10)) for _ in range(3)] == draws
    assert list(PoissonSamplerFactory(seed=6)(100, 10)) != draws[0]


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


def test_without_a_seed_the_batches_are_secret_not_derived_from_the_global_seed() -> None:
    draws = []
    for _ in range(2):
        torch.manual_seed(0)  # what a run seed fixes: it must not fix the batches
        draws.append((list(PoissonBatchSampler(100, 0.1)), list(PoissonSamplerFactory()(100, 10))))
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]
    factory = PoissonSamplerFactory()
    assert factory.seed is None and factory(100, 10).seed != factory(100, 10).seed
