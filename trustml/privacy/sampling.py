"""Poisson sampling of training batches, the sampling scheme DP-SGD's accountants analyse."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from trustml.errors import ConfigError


class PoissonBatchSampler(Sampler[list[int]]):
    """Batches in which every training index appears independently with probability ``sample_rate``.

    An epoch has ``num_batches`` batches (default ``round(1 / sample_rate)``, one pass in expectation);
    batch sizes vary around ``sample_rate * num_samples`` and may be empty, which the collate function
    must accept. Use as ``DataLoader(dataset, batch_sampler=PoissonBatchSampler(...))``. A pass draws from
    the stream ``seed + epoch`` and then advances ``epoch``, so successive passes draw fresh batches and runs
    are reproducible; :meth:`set_epoch` selects the stream explicitly (the privacy accountant sets the
    trainer's epoch, so a resumed run continues where it stopped rather than repeating epoch 0's batches).
    """

    def __init__(self, num_samples: int, sample_rate: float, num_batches: int | None = None, seed: int = 0) -> None:
        if num_samples <= 0:
            raise ConfigError(f"Poisson sampling needs a non-empty training set, got {num_samples} samples")
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"Poisson sampling rate must be in (0, 1], got {sample_rate} (batch size / data size)")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.num_batches = num_batches if num_batches is not None else max(1, round(1.0 / sample_rate))
        self.seed = seed
        self.epoch = 0

    @classmethod
    def from_batch_size(cls, num_samples: int, batch_size: int, seed: int = 0) -> PoissonBatchSampler:
        """Sampler whose expected batch size is ``min(batch_size, num_samples)`` (rate at most 1).

        A data set smaller than the batch (e.g. a federated device's) is sampled with rate 1: every sample
        in every batch, with no amplification by subsampling, which the accountant then counts as such.
        """
        if batch_size <= 0 or num_samples <= 0:
            raise ConfigError(
                f"Poisson sampling needs a positive batch size and data size, got {batch_size} and {num_samples}"
            )
        return cls(num_samples, min(1.0, batch_size / num_samples), seed=seed)

    @property
    def expected_batch_size(self) -> float:
        """Mean batch size ``sample_rate * num_samples``."""
        return self.sample_rate * self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        for _ in range(self.num_batches):
            mask = torch.rand(self.num_samples, generator=generator) < self.sample_rate
            yield mask.nonzero().flatten().tolist()


class PoissonSamplerFactory:
    """Builds the :class:`PoissonBatchSampler` of every training loader, each with its own seed.

    The seeds come from one stream seeded by ``seed``, so loaders built one after another (e.g. a federated
    device's loader in every round) never repeat each other's batches, and a run is reproducible. Use as a
    data module's ``train_batch_sampler_factory``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._seeds = torch.Generator().manual_seed(seed)

    def __call__(self, num_samples: int, batch_size: int) -> PoissonBatchSampler:
        sampler_seed = int(torch.randint(0, 2**62, (), generator=self._seeds))
        return PoissonBatchSampler.from_batch_size(num_samples, batch_size, seed=sampler_seed)
