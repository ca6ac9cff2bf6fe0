"""Fixtures for the federated tests: digits, a small MLP trained by ERM, and a runner-like trainer factory."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from trustml.data.digits import DigitsDataModule
from trustml.methods.erm import ERM
from trustml.models.mlp import MLP


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    """scikit-learn digits (1,797 real images), split once per test module."""
    datamodule = DigitsDataModule(batch_size=16)
    datamodule.setup("fit")
    return datamodule


def make_method(datamodule: DigitsDataModule, lr: float = 0.1, seed: int = 0) -> ERM:
    """ERM on a one-hidden-layer MLP with SGD, deterministic initialisation."""
    torch.manual_seed(seed)
    model = MLP(num_classes=datamodule.num_classes, input_dim=datamodule.input_dim, hidden_sizes=[32], dropout=0.0)
    return ERM(model=model, optimizer=partial(torch.optim.SGD, lr=lr), num_classes=datamodule.num_classes)


def trainer_factory(root: Path, callbacks: list[pl.Callback] | None = None) -> Callable[..., pl.Trainer]:
    """Like the runner's ``make_trainer``: configured defaults, keyword overrides win."""

    def make_trainer(**overrides: Any) -> pl.Trainer:
        kwargs: dict[str, Any] = {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 3,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "callbacks": list(callbacks or []),
        }
        kwargs.update(overrides)
        return pl.Trainer(**kwargs)

    return make_trainer
