"""Fixtures for the federated tests: digits, a small MLP trained by ERM, plugins built from their options, and a
runner-like trainer factory."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from trustml.data.digits import DigitsConfig, DigitsDataModule
from trustml.federation.strategies import FederatedTraining
from trustml.methods.erm import ERM, ERMConfig
from trustml.models.mlp import MLP, MLPConfig
from trustml.privacy.options import DPSGDConfig
from trustml.privacy.plugins import DPSGD


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    """scikit-learn digits (1,797 real images), split once per test module."""
    datamodule = DigitsDataModule(DigitsConfig(batch_size=16))
    datamodule.setup("fit")
    return datamodule


def make_method(datamodule: DigitsDataModule, lr: float = 0.1, seed: int = 0) -> ERM:
    """ERM on a one-hidden-layer MLP with SGD, deterministic initialisation."""
    torch.manual_seed(seed)
    model = MLP(
        MLPConfig(hidden_sizes=[32], dropout=0.0), num_classes=datamodule.num_classes, input_dim=datamodule.input_dim
    )
    return ERM(ERMConfig(), model=model, optimizer=partial(torch.optim.SGD, lr=lr), num_classes=datamodule.num_classes)


def federation(cls: type[FederatedTraining], **options: Any) -> FederatedTraining:
    """The federation plugin ``cls`` built from its options dataclass, e.g. ``federation(FedAvg, rounds=2,
    partition={"num_clients": 4})`` (each section a mapping of its options)."""
    return cls(cls.config_class(**options))  # type: ignore[misc]


def dp_sgd(**options: Any) -> DPSGD:
    """The ``optimizer=dp_sgd`` plugin with ``options`` (``optimizer.<name>=...``)."""
    return DPSGD(DPSGDConfig(**options))


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
