"""Data-module base: in-memory splits of (inputs, labels, sample ids, group columns) served as dict batches.

Every data plugin loads its splits once (:meth:`TrustDataModule.load_splits`); the base class serves
them as batches ``{"x": inputs, "y": labels, "index": global sample ids}``. Sample ids are unique across
splits and stable for a given data config, so methods can cache per-sample values (old-model logits) and
reports can name flipped samples. Group columns (e.g. conversation id, speaker) travel with a split for
grouped splits and federated partitions.
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from trustml.errors import DataError
from trustml.plugin import DataPlugin

Inputs = Tensor | dict[str, Tensor] | list[str]
#: One batch as the data modules yield it and methods and optimizers take it: ``{"x": inputs, "y": labels [B],
#: "index": sample ids [B]}``, plus what a method adds (e.g. cached old-model logits).
Batch = dict[str, Any]
SPLITS = ("train", "val", "test")


def as_index(idx: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    """``idx`` as an ``int64`` index tensor (a long tensor is returned as it is, without a conversion call)."""
    if isinstance(idx, Tensor) and idx.dtype == torch.long:
        return idx
    return torch.as_tensor(idx, dtype=torch.long)


def take(inputs: Inputs, idx: Tensor | np.ndarray | Sequence[int]) -> Inputs:
    """Rows ``idx`` of ``inputs`` (a tensor, a dict of equally long tensors, or a list of strings)."""
    if isinstance(inputs, Tensor):
        return inputs[as_index(idx)]
    if isinstance(inputs, dict):
        index = as_index(idx)
        return {k: v[index] for k, v in inputs.items()}
    return [inputs[int(i)] for i in idx]


def num_rows(inputs: Inputs) -> int:
    """Number of samples in ``inputs``."""
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


@dataclass
class Split:
    """One split held in memory: inputs, integer labels, global sample ids and per-sample group columns."""

    inputs: Inputs
    labels: Tensor
    index: Tensor
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = as_index(self.labels)
        self.index = as_index(self.index)
        n = num_rows(self.inputs)
        if len(self.labels) != n or len(self.index) != n:
            raise ValueError(f"split has {n} inputs but {len(self.labels)} labels and {len(self.index)} ids")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: Tensor | np.ndarray | Sequence[int]) -> Split:
        """The split restricted to positions ``rows`` (ids and group columns follow)."""
        rows_np = np.asarray(rows, dtype=np.int64)
        positions = torch.from_numpy(rows_np)
        return Split(
            inputs=take(self.inputs, positions),
            labels=self.labels[positions],
            index=self.index[positions],
            groups={k: v[rows_np] for k, v in self.groups.items()},
        )


class SplitDataset(Dataset):
    """Map-style dataset over a :class:`Split` that fetches whole batches at once (``__getitems__``)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        idx = as_index(rows)
        return {"x": take(self.split.inputs, idx), "y": self.split.labels[idx], "index": self.split.index[idx]}

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])


def _batch_as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


@dataclass
class DataOptions:
    """Options every data plugin has: batch sizes, the split seed, and an optional random training subset.

    Every data plugin's options dataclass extends this one (so these fields and their defaults are declared
    once). ``eval_batch_size`` defaults to ``batch_size``. ``train_subset_fraction`` < 1 keeps each training
    sample independently with that probability (seeded by ``train_subset_seed``); ids of the kept samples are
    unchanged.
    """

    batch_size: int = 64
    eval_batch_size: int | None = None
    split_seed: int = 0
    train_subset_fraction: float = 1.0
    train_subset_seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise DataError(f"data.batch_size must be positive, got {self.batch_size}")
        if not 0.0 < self.train_subset_fraction <= 1.0:
            raise DataError(f"data.train_subset_fraction must be in (0, 1], got {self.train_subset_fraction}")


class TrustDataModule(DataPlugin, pl.LightningDataModule, metaclass=ABCMeta):
    """Base of trustml data plugins, built as ``Class(config)`` with ``config`` a :class:`DataOptions` (subclass).

    Subclasses implement :meth:`load_splits` (which also sets ``label_names``) and set ``input_kind``
    (:class:`~trustml.plugin.DataPlugin`): ``"features"`` (a float tensor [N, D]) or ``"text"`` (a list of strings
    that a text model turns into tensors through :meth:`map_inputs`).
    """

    def __init__(self, config: DataOptions) -> None:
        super().__init__()
        self.config = config
        self.splits: dict[str, Split] = {}
        self.label_names: list[str] = []
        #: Each split's texts as read, kept by :meth:`map_inputs` when it replaces them by model inputs.
        self.raw_texts: dict[str, list[str]] = {}
        #: Optional factory for the training batch sampler (e.g. Poisson sampling for DP-SGD).
        self.train_batch_sampler_factory: Callable[[int, int], Sampler[list[int]]] | None = None

    @property
    def batch_size(self) -> int:
        """Training batch size (``data.batch_size``)."""
        return self.config.batch_size

    @property
    def eval_batch_size(self) -> int:
        """Validation/test batch size (``data.eval_batch_size``, else ``data.batch_size``)."""
        return self.config.eval_batch_size or self.config.batch_size

    @abstractmethod
    def load_splits(self) -> dict[str, Split]:
        """Read the data and return the ``train``/``val``/``test`` splits (called once)."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DataError(f"{type(self).__name__} produced no {', '.join(missing)} split")
        if self.config.train_subset_fraction < 1.0:
            # e.g. shadow models of a membership-inference audit, each trained on a random part of the data
            train = splits["train"]
            rng = np.random.default_rng(self.config.train_subset_seed)
            keep = rng.random(len(train)) < self.config.train_subset_fraction
            splits["train"] = train.subset(np.flatnonzero(keep))
        empty = [s for s in SPLITS if len(splits[s]) == 0]
        if empty:
            raise DataError(f"{type(self).__name__}: split(s) {', '.join(empty)} are empty; use more data")
        self.splits = splits

    @property
    def whole_train_split(self) -> Split:
        """The training split of the run's whole data: this module's own; a module that serves part of another's
        (a federated client's rows) returns that other module's whole training split."""
        return self.splits["train"]

    # --- shape information used to build models ------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``label_names``)."""
        return len(self.label_names)

    @property
    def input_dim(self) -> int | None:
        """Feature width of tensor inputs, ``None`` for text or token inputs."""
        inputs = self.splits["train"].inputs
        return int(inputs.shape[1]) if isinstance(inputs, Tensor) and inputs.dim() == 2 else None

    def map_inputs(self, fn: Callable[[Inputs], Inputs]) -> None:
        """Replace every split's inputs by ``fn(inputs)`` (e.g. tokenize or embed text once); texts are kept in
        :attr:`raw_texts` (e.g. for counterfactual evaluation)."""
        for name, split in self.splits.items():
            if isinstance(split.inputs, list):
                self.raw_texts[name] = list(split.inputs)
            split.inputs = fn(split.inputs)

    def with_train_batch_sampler(self, factory: Callable[[int, int], Sampler[list[int]]]) -> TrustDataModule:
        """A view of this module (same splits, options and labels) whose training loader draws its batches from
        ``factory(N, batch_size)`` (e.g. Poisson sampling for DP-SGD); this module itself is left as it is."""
        view = copy.copy(self)
        view.train_batch_sampler_factory = factory
        return view

    # --- loaders -------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = SplitDataset(self.splits[split])
        if split == "train" and self.train_batch_sampler_factory is not None:
            sampler = self.train_batch_sampler_factory(len(dataset), self.batch_size)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=_batch_as_is)
        size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(dataset, batch_size=size, shuffle=shuffle, collate_fn=_batch_as_is)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Positions of ``labels`` split into parts of the given fractions, stratified by label, seeded."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    parts: list[np.ndarray] = []
    remaining, remaining_labels, left = positions, labels, 1.0
    for frac in fractions[:-1]:
        take_frac = frac / left
        chosen, rest = train_test_split(remaining, train_size=take_frac, random_state=seed, stratify=remaining_labels)
        parts.append(np.sort(chosen))
        remaining, remaining_labels, left = rest, labels[rest], left - frac
    parts.append(np.sort(remaining))
    return parts


def grouped_split(groups: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Positions split so that every group (e.g. a conversation) falls entirely in one part.

    Each part after the first gets ``round(fraction * n_groups)`` groups (at least one when its fraction is
    positive); the first part gets the rest.
    """
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    counts = [max(1, round(f * len(unique))) if f > 0 else 0 for f in fractions[1:]]
    first = len(unique) - sum(counts)
    if first < 1:
        raise DataError(f"only {len(unique)} groups: too few to split into parts of {list(fractions)}")
    bounds = np.cumsum([first, *counts])
    position_of = {g: i for i, g in enumerate(unique.tolist())}
    rank = np.array([position_of[g] for g in groups.tolist()])
    starts = np.concatenate([[0], bounds[:-1]])
    return [np.flatnonzero((rank >= lo) & (rank < hi)) for lo, hi in zip(starts, bounds, strict=True)]
