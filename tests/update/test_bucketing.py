"""Length-bucketed batches: every sample once per epoch, little padding, and the option on the text data modules."""

from __future__ import annotations

from pathlib import Path

import torch

from trustml.data.bucketing import LengthBucketBatchSampler, sample_lengths
from trustml.data.massive import MassiveConfig, MassiveDataModule


def padded_tokens(batches: list[list[int]], lengths: torch.Tensor) -> int:
    """Tokens a batch-wise dynamic padding computes: each batch padded to its longest member."""
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def test_each_sample_once_per_epoch_and_less_padding() -> None:
    torch.manual_seed(0)
    lengths = torch.randint(2, 60, (1000,))
    sampler = LengthBucketBatchSampler(lengths, batch_size=32, shuffle=True, pool_batches=10)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for batch in epoch for i in batch) == list(range(1000))
        assert len(epoch) == len(sampler)
    assert first != second  # reshuffled every epoch
    random_batches = torch.randperm(1000).split(32)
    random_cost = padded_tokens([b.tolist() for b in random_batches], lengths)
    assert padded_tokens(first, lengths) < 0.75 * random_cost

    ordered = list(LengthBucketBatchSampler(lengths, batch_size=32, shuffle=False))
    flat = [i for batch in ordered for i in batch]
    assert flat == torch.sort(lengths, stable=True).indices.tolist()
    assert len(ordered) == 32


def test_sample_lengths_of_tokens_and_texts() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sample_lengths({"input_ids": mask, "attention_mask": mask}).tolist() == [2, 3]
    assert sample_lengths(["ab", "abcd"]).tolist() == [2, 4]
    assert sample_lengths(torch.zeros(3, 5)).tolist() == [1, 1, 1]


def test_massive_loaders_bucket_by_length(massive_dir: Path) -> None:
    data = MassiveDataModule(MassiveConfig(path=str(massive_dir), stage="updated", batch_size=8))
    data.setup()
    texts = data.splits["val"].inputs
    batches = list(data.val_dataloader())
    assert sum(len(b["y"]) for b in batches) == len(texts)
    lengths = [len(t) for b in batches for t in b["x"]]
    assert lengths == sorted(lengths)  # evaluation batches go in length order
    train_ids = sorted(i for b in data.train_dataloader() for i in b["index"].tolist())
    assert train_ids == sorted(data.splits["train"].index.tolist())
    plain = MassiveDataModule(MassiveConfig(path=str(massive_dir), stage="updated", bucket_by_length=False))
    plain.setup()
    assert type(plain.train_dataloader().batch_sampler).__name__ == "BatchSampler"
