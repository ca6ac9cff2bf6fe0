"""Length-bucketed batches for text: each batch holds texts of similar length, so dynamic padding pads little.

A text model pads a batch to its longest sequence (``model=hf_encoder`` trims its token ids to the longest
text of each batch), so the cost of a batch is ``B x max_len``. Random batches of short and long texts waste
most of that on padding; batches of similar lengths do not.

- Training (:class:`LengthBucketBatchSampler` with ``shuffle=True``): every epoch the samples are put in a
  random order (the global torch RNG, as a shuffling ``DataLoader`` does, so ``seed`` makes epochs
  reproducible), cut into pools of ``pool_batches x batch_size`` samples, each pool is sorted by length and cut
  into batches, and the batches are shuffled. Every sample is in exactly one batch per epoch; batches stay
  random in membership across epochs (only within a pool of similar lengths).
- Evaluation (``shuffle=False``): all samples sorted by length (stable, so ties keep the split's order) and cut
  into batches. Metrics that are sums over samples (accuracy, flip counts by sample id) do not depend on the
  order.

The length of a sample is its number of non-padding tokens (``attention_mask`` of tokenized inputs), the
character count of a raw text, or 1 for anything else (then the batches are ordinary random batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from trustml.data.base import Split, SplitDataset


def sample_lengths(inputs: Any) -> Tensor:
    """Per-sample lengths ``[N]``: non-padding tokens of tokenized inputs, characters of texts, else ones."""
    if isinstance(inputs, dict) and "attention_mask" in inputs:
        return inputs["attention_mask"].sum(dim=1).long()
    if isinstance(inputs, list):
        return torch.tensor([len(text) for text in inputs], dtype=torch.long)
    rows = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    return torch.ones(rows, dtype=torch.long)


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of row positions with similar ``lengths`` (see the module doc); ``drop_last`` is never done."""

    def __init__(self, lengths: Tensor, batch_size: int, shuffle: bool, pool_batches: int = 50) -> None:
        if batch_size <= 0 or pool_batches <= 0:
            raise ValueError(f"batch_size and pool_batches must be positive, got {batch_size} and {pool_batches}")
        self.lengths = lengths.long().cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pool_batches = pool_batches

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            return -(-n // size)
        pool = size * self.pool_batches
        full, rest = divmod(n, pool)
        return full * self.pool_batches + -(-rest // size)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices
            yield from (chunk.tolist() for chunk in order.split(self.batch_size))
            return
        order = torch.randperm(len(self.lengths))
        batches: list[Tensor] = []
        for pool in order.split(self.batch_size * self.pool_batches):
            by_length = pool[torch.sort(self.lengths[pool], stable=True).indices]
            batches.extend(by_length.split(self.batch_size))
        for i in torch.randperm(len(batches)).tolist():
            yield batches[i].tolist()


def _batch_as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def length_bucketed_loader(split: Split, batch_size: int, shuffle: bool, pool_batches: int = 50) -> DataLoader:
    """A ``DataLoader`` over ``split`` whose batches come from a :class:`LengthBucketBatchSampler`."""
    sampler = LengthBucketBatchSampler(sample_lengths(split.inputs), batch_size, shuffle, pool_batches)
    return DataLoader(SplitDataset(split), batch_sampler=sampler, collate_fn=_batch_as_is)
