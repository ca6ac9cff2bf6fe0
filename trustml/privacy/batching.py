"""Splitting and vmapping a method's batch (a dict of per-sample tensors, possibly nested) along its samples.

A batch is ``{"x": tensor or dict of tensors, "y": [B], "index": [B], ...}``. An entry is *per-sample* when
it is a tensor (or list) whose first dimension is the batch size ``B``; everything else (a shared tensor, a
flag, a tokenizer name) is passed unchanged to every slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from trustml.data.base import Batch


def batch_size(batch: Batch) -> int:
    """Number of samples in a training batch (the length of its labels ``y``)."""
    if "y" not in batch:
        raise KeyError(f"a training batch needs per-sample labels 'y'; got keys {sorted(batch)}")
    return int(batch["y"].shape[0])


def _is_per_sample(value: Any, size: int) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == size


def _slice(value: Any, start: int, stop: int, size: int) -> Any:
    if isinstance(value, dict):
        return {k: _slice(v, start, stop, size) for k, v in value.items()}
    if _is_per_sample(value, size) or (isinstance(value, list) and len(value) == size):
        return value[start:stop]
    return value


def split_batch(batch: Batch, max_size: int | None) -> Iterator[Batch]:
    """Consecutive sub-batches of at most ``max_size`` samples (the whole batch when ``max_size`` is None)."""
    size = batch_size(batch)
    if max_size is None or size <= max_size:
        yield batch
        return
    for start in range(0, size, max_size):
        yield _slice(batch, start, min(start + max_size, size), size)


def vmap_in_dims(value: Any, size: int) -> Any:
    """``torch.func.vmap`` in_dims for ``value``: 0 for per-sample tensors, None for everything else."""
    if isinstance(value, dict):
        return {k: vmap_in_dims(v, size) for k, v in value.items()}
    return 0 if _is_per_sample(value, size) else None


def add_sample_dim(value: Any, in_dims: Any) -> Any:
    """Inside vmap: give each mapped tensor back a leading batch dimension of size 1."""
    if isinstance(value, dict):
        return {k: add_sample_dim(v, in_dims[k]) for k, v in value.items()}
    return value.unsqueeze(0) if in_dims == 0 else value
