"""Fixtures for the federated tests: digits, a small MLP trained by ERM, plugins built from their options, a
runner-like trainer factory, and running a federation to its round records."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
from trustml.privacy.callback import PrivacyAccountantCallback
from trustml.privacy.options import DPSGDConfig
from trustml.privacy.plugins import DPSGD
from trustml.privacy.sampling import PoissonBatchSampler


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    """scikit-learn digits (1,797 real images), split once per test module."""
    datamodule = DigitsDataModule(DigitsConfig(batch_size=16))
    datamodule.setup("fit")
    return datamodule


def poisson_digits(batch_size: int = 32) -> DigitsDataModule:
    """Digits whose training batches are Poisson-sampled with a fixed seed (as DP-SGD samples; reproducible)."""
    datamodule = DigitsDataModule(DigitsConfig(batch_size=batch_size))
    datamodule.setup("fit")
    datamodule.train_batch_sampler_factory = partial(PoissonBatchSampler.from_batch_size, seed=0)
    return datamodule


def make_method(datamodule: DigitsDataModule, lr: float = 0.1, seed: int = 0, optimizer: Any = None) -> ERM:
    """ERM on a one-hidden-layer MLP, deterministic initialisation, trained by SGD at ``lr`` (or by ``optimizer``,
    e.g. a DP-SGD plugin)."""
    torch.manual_seed(seed)
    model = MLP(
        MLPConfig(hidden_sizes=[32], dropout=0.0), num_classes=datamodule.num_classes, input_dim=datamodule.input_dim
    )
    factory = optimizer if optimizer is not None else partial(torch.optim.SGD, lr=lr)
    return ERM(ERMConfig(), model=model, optimizer=factory, num_classes=datamodule.num_classes)


def federation(
    cls: type[FederatedTraining],
    *,
    num_clients: int | None = None,
    clients_per_round: int | None = None,
    seed: int | None = None,
    **options: Any,
) -> FederatedTraining:
    """The federation plugin ``cls`` built from its options dataclass, each section a mapping of its options, e.g.
    ``federation(FedAvg, rounds=2, num_clients=4, client={"local_steps": 1})``: ``num_clients``,
    ``clients_per_round`` and ``seed`` are short for ``partition.num_clients``, ``selection.clients_per_round``
    and ``server.seed``."""
    for section, name, value in (
        ("partition", "num_clients", num_clients),
        ("selection", "clients_per_round", clients_per_round),
        ("server", "seed", seed),
    ):
        if value is not None:
            options[section] = {**options.get(section, {}), name: value}
    return cls(cls.config_class(**options))  # type: ignore[misc]


def dp_sgd(**options: Any) -> DPSGD:
    """The ``optimizer=dp_sgd`` plugin with ``options`` (``optimizer.<name>=...``)."""
    return DPSGD(DPSGDConfig(**options))


class ClientPrivacyAccountant(PrivacyAccountantCallback):
    """The DP-SGD accountant run inside every client's local fit (what ``federated_scope = "client"`` declares)."""

    federated_scope = "client"


def holds_row(trainer: pl.Trainer, row: int) -> bool:
    """Whether the client fit of ``trainer`` (or the client loop's fit view) trains on training row ``row``."""
    return row in set(trainer.datamodule.rows.tolist())


class RaiseOnRow(pl.Callback):
    """Client-side fault: the client holding ``row`` crashes during local training (in a loop or Lightning fit)."""

    federated_scope = "client"
    client_loop_ready = True

    def __init__(self, row: int) -> None:
        self.row = row

    def on_fit_start(self, trainer: Any, pl_module: pl.LightningModule) -> None:
        if holds_row(trainer, self.row):
            raise RuntimeError("simulated client crash")


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


def history_of(root: Path) -> list[dict[str, Any]]:
    """The per-round records (``federation/rounds.jsonl``) of the run in ``root``."""
    return [json.loads(line) for line in (root / "federation" / "rounds.jsonl").read_text().splitlines()]


def run_federation(
    plugin: FederatedTraining,
    datamodule: DigitsDataModule,
    root: Path,
    callbacks: Sequence[pl.Callback] = (),
    method: pl.LightningModule | None = None,
    ckpt_path: Path | None = None,
) -> tuple[pl.LightningModule, list[dict[str, Any]], dict[str, float]]:
    """Run ``plugin`` into ``root`` (training :func:`make_method`'s method unless ``method`` is given); return the
    trained method, the round records and the run's results."""
    method = method if method is not None else make_method(datamodule)
    fit = plugin.run(method, datamodule, trainer_factory(root, list(callbacks)), ckpt_path=ckpt_path)
    return method, history_of(root), fit.results
