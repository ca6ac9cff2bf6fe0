"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): real data, no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trustml.data.base import DataOptions, Split, TrustDataModule, stratified_split
from trustml.registry import register


@dataclass
class DigitsConfig(DataOptions):
    """Options of ``data=digits``: the fractions of the images held out for validation and test."""

    val_fraction: float = 0.15
    test_fraction: float = 0.25


@register("data", "digits", dataclass=DigitsConfig)
class DigitsDataModule(TrustDataModule):
    """8x8 digits as 64 pixel features standardized with train-split statistics; stratified splits."""

    input_kind = "features"
    config: DigitsConfig

    def load_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.data.astype(np.float32)
        y = bunch.target.astype(np.int64)
        self.label_names = [str(c) for c in range(10)]
        val, test = self.config.val_fraction, self.config.test_fraction
        parts = stratified_split(y, (1.0 - val - test, val, test), self.config.split_seed)
        mean = x[parts[0]].mean(axis=0)
        std = x[parts[0]].std(axis=0)
        std[std < 1e-6] = 1.0  # pixels that are constant in the training split are only centred
        x = (x - mean) / std
        return {
            name: Split(
                inputs=torch.from_numpy(x[rows]), labels=torch.from_numpy(y[rows]), index=torch.from_numpy(rows)
            )
            for name, rows in zip(("train", "val", "test"), parts, strict=True)
        }
