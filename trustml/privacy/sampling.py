"""Poisson sampling of training batches, the sampling scheme DP-SGD's accountants analyse.

Amplification by subsampling, which the accountants count, assumes that which samples a batch holds stays
secret. A sampler's seed is therefore drawn from OS entropy (:func:`secret_seed`) unless a seed is given, and
nothing in a run directory records it; a given seed (``optimizer.deterministic=true``) makes the batches
reproducible, and then derivable by anyone who knows it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from trustml.errors import ConfigError
from trustml.privacy.distributed import process_rank_and_count


def secret_seed() -> int:
    """A 62-bit seed from the operating system's entropy (:mod:`secrets`), reproducible by nobody."""
    return secrets.randbits(62)


def poisson_sample_rate(num_samples: int, batch_size: int) -> float:
    """The Poisson rate whose expected batch is ``batch_size`` of ``num_samples`` samples (at most 1)."""
    return min(1.0, batch_size / num_samples)


def batches_per_pass(sample_rate: float) -> int:
    """Poisson batches in one pass over the data in expectation: ``round(1 / sample_rate)``, at least 1."""
    return max(1, round(1.0 / sample_rate))


class PoissonBatchSampler(Sampler[list[int]]):
    """Batches in which every training index appears independently with probability ``sample_rate``.

    An epoch has ``num_batches`` batches (default ``round(1 / sample_rate)``, one pass in expectation);
    batch sizes vary around ``sample_rate * num_samples`` and may be empty, which the collate function
    must accept. Use as ``DataLoader(dataset, batch_sampler=PoissonBatchSampler(...))``. A pass draws from
    the stream ``seed + epoch`` and then advances ``epoch``, so successive passes draw fresh batches;
    :meth:`set_epoch` selects the stream explicitly (the privacy accountant sets the trainer's epoch, so a
    resumed run continues where it stopped rather than repeating epoch 0's batches). ``seed=None`` (the
    default) draws a secret seed from OS entropy (:func:`secret_seed`); a given seed makes the batches
    reproducible by whoever knows it (tests, ``optimizer.deterministic=true``).

    Across ``num_shards`` processes (DDP), process ``shard`` yields the indices ``i`` with
    ``i mod num_shards = shard`` of each Poisson draw over all ``num_samples`` indices at the global rate: its
    shard is Poisson-sampled at ``sample_rate``, and since the shards partition the data the union of the
    processes' batches is a Poisson sample of the whole set (:mod:`trustml.privacy.distributed`), whether the
    processes share a seed (then the union is exactly the one-process batch of that seed) or each has its own
    secret one. Every process yields ``num_batches`` batches (some may be empty), so the processes step together.
    """

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        num_batches: int | None = None,
        seed: int | None = None,
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        if num_samples <= 0:
            raise ConfigError(f"Poisson sampling needs a non-empty training set, got {num_samples} samples")
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"Poisson sampling rate must be in (0, 1], got {sample_rate} (batch size / data size)")
        if not 0 <= shard < num_shards:
            raise ConfigError(f"Poisson sampling shard {shard} is not one of the {num_shards} processes' shards")
        self.shard, self.num_shards = shard, num_shards
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.num_batches = num_batches if num_batches is not None else batches_per_pass(sample_rate)
        self.seed = secret_seed() if seed is None else seed
        self.epoch = 0

    @classmethod
    def from_batch_size(
        cls, num_samples: int, batch_size: int, seed: int | None = None, shard: int = 0, num_shards: int = 1
    ) -> PoissonBatchSampler:
        """Sampler whose expected (global) batch size is ``min(batch_size, num_samples)`` (rate at most 1).

        A data set smaller than the batch (e.g. a federated device's) is sampled with rate 1: every sample
        in every batch, with no amplification by subsampling, which the accountant then counts as such.
        """
        if batch_size <= 0 or num_samples <= 0:
            raise ConfigError(
                f"Poisson sampling needs a positive batch size and data size, got {batch_size} and {num_samples}"
            )
        rate = poisson_sample_rate(num_samples, batch_size)
        return cls(num_samples, rate, seed=seed, shard=shard, num_shards=num_shards)

    @property
    def expected_batch_size(self) -> float:
        """Mean batch size ``sample_rate * num_samples`` over all the processes' shards together."""
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
            if self.num_shards > 1:
                mask[torch.arange(self.num_samples) % self.num_shards != self.shard] = False
            yield mask.nonzero().flatten().tolist()


class PoissonSamplerFactory:
    """Builds the :class:`PoissonBatchSampler` of every training loader, each with its own seed.

    ``seed=None`` (the default, and what DP training uses unless ``optimizer.deterministic=true``): every
    sampler gets a fresh secret seed from OS entropy, so no recorded value (run seed, config) reveals the
    batches. A given ``seed`` starts one stream of sampler seeds, so loaders built one after another (e.g. a
    federated device's loader in every round) never repeat each other's batches and a run is reproducible, but
    anyone who knows ``seed`` knows every batch. Use as a data module's ``train_batch_sampler_factory``.

    A loader built inside a torch process group (Lightning's DDP processes) samples this process's shard of the
    data (``shard`` = rank, ``num_shards`` = world size): the processes together draw one Poisson sample of the
    whole training set per step. With a given ``seed`` every process draws the same sampler seeds, so the union of
    their batches is the one-process batch of that seed.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._seeds = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, num_samples: int, batch_size: int) -> PoissonBatchSampler:
        if self._seeds is None:
            sampler_seed = secret_seed()
        else:
            sampler_seed = int(torch.randint(0, 2**62, (), generator=self._seeds))
        rank, world = process_rank_and_count()
        return PoissonBatchSampler.from_batch_size(
            num_samples, batch_size, seed=sampler_seed, shard=rank, num_shards=world
        )
