"""Small models, batches, a data module and a reference per-sample loop shared by the privacy tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustml.data.base import DataOptions, Split, TrustDataModule

Batch = dict[str, object]


def cross_entropy(logits: Tensor, batch: Batch) -> Tensor:
    """Per-sample cross-entropy, the method objective the tests differentiate."""
    return F.cross_entropy(logits, batch["y"], reduction="none")


class SequenceClassifier(nn.Module):
    """Embedding -> Linear over every position -> mean pool -> LayerNorm -> Linear; ``x`` is a dict of ids."""

    def __init__(self, vocab: int = 20, dim: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.proj = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        mask = x["mask"].unsqueeze(-1).float()
        hidden = torch.tanh(self.proj(self.embed(x["ids"])))
        return self.head(self.norm((hidden * mask).sum(1) / mask.sum(1)))


class SharedInputBlock(nn.Module):
    """Embedding -> per-position LayerNorm -> three Linear layers reading the same states (as a transformer's
    query, key and value) -> LayerNorm over (positions, features) without bias -> mean pool -> Linear."""

    def __init__(self, vocab: int = 20, dim: int = 8, length: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm_in = nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm((length, dim), bias=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        hidden = self.norm_in(self.embed(x["ids"]))
        mixed = self.query(hidden) * torch.tanh(self.key(hidden)) + self.value(hidden)
        return self.head(self.norm_out(mixed).mean(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def feature_batch(size: int = 6, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(size, 5, generator=generator),
        "y": torch.randint(0, 3, (size,), generator=generator),
        "index": torch.arange(size),
        "split": "train",  # a non-per-sample entry that must pass through unchanged
    }


def sequence_batch(size: int = 6, length: int = 5, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (size, length), generator=generator)
    ids[0, -2:] = 0  # padding
    ids[1, 1] = ids[1, 0]  # a repeated token
    return {
        "x": {"ids": ids, "mask": (ids != 0).long()},
        "y": torch.randint(0, 3, (size,), generator=generator),
        "index": torch.arange(size),
    }


def take(batch: Batch, i: int) -> Batch:
    """Sample ``i`` of ``batch`` as a batch of one."""

    def one(value: object) -> object:
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        return value[i : i + 1] if isinstance(value, Tensor) else value

    return {k: one(v) for k, v in batch.items()}


def reference_per_sample_grads(
    model: nn.Module, params: dict[str, nn.Parameter], loss_fn: Callable[[Tensor, Batch], Tensor], batch: Batch
) -> dict[str, Tensor]:
    """Per-sample gradients by a Python loop over samples (the slow reference)."""
    rows = []
    for i in range(batch["y"].shape[0]):
        one = take(batch, i)
        grads = torch.autograd.grad(loss_fn(model(one["x"]), one).sum(), list(params.values()), allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values(), strict=True)])
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(params)}


class BlobsDataModule(TrustDataModule):
    """Gaussian blobs in 5 dimensions, 3 classes: ``n_train``/30/30 samples."""

    def __init__(self, n_train: int = 120, batch_size: int = 24) -> None:
        super().__init__(DataOptions(batch_size=batch_size))
        self.n_train = n_train

    def load_splits(self) -> dict[str, Split]:
        generator = torch.Generator().manual_seed(7)
        total = self.n_train + 60
        centers = torch.randn(3, 5, generator=generator) * 2
        y = torch.arange(total) % 3
        x = centers[y] + torch.randn(total, 5, generator=generator)
        self.label_names = ["a", "b", "c"]
        n = self.n_train
        bounds = {"train": (0, n), "val": (n, n + 30), "test": (n + 30, total)}
        return {name: Split(x[a:b], y[a:b], torch.arange(a, b)) for name, (a, b) in bounds.items()}
