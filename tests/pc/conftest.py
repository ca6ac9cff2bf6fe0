"""Tiny synthetic feature data and hand-written run directories of trained old models."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from trustml.data.base import DataOptions, Split, TrustDataModule
from trustml.models.mlp import MLP, MLPConfig

INPUT_DIM = 8


class BlobsDataModule(TrustDataModule):
    """Overlapping Gaussian blobs: ``num_classes`` classes in 8 dimensions; 150/45/45 samples, global ids."""

    def __init__(self, num_classes: int = 3, label_names: Sequence[str] | None = None, batch_size: int = 32) -> None:
        super().__init__(DataOptions(batch_size=batch_size))
        self.classes = num_classes
        self.names = list(label_names) if label_names is not None else [f"c{i}" for i in range(num_classes)]

    def load_splits(self) -> dict[str, Split]:
        generator = torch.Generator().manual_seed(123)
        centers = torch.randn(self.classes, INPUT_DIM, generator=generator) * 1.5
        y = torch.arange(240) % self.classes
        x = centers[y] + torch.randn(240, INPUT_DIM, generator=generator)
        self.label_names = self.names
        bounds = {"train": (0, 150), "val": (150, 195), "test": (195, 240)}
        return {name: Split(x[a:b], y[a:b], torch.arange(a, b)) for name, (a, b) in bounds.items()}


def write_run(
    run_dir: Path,
    model: torch.nn.Module,
    config: dict,
    num_classes: int,
    label_names: Sequence[str],
    input_dim: int | None = INPUT_DIM,
) -> Path:
    """A completed run directory as the CLI leaves it: run.json with model_spec, checkpoints/best.ckpt."""
    (run_dir / "checkpoints").mkdir(parents=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, run_dir / "checkpoints" / "best.ckpt")
    spec = {"config": config, "num_classes": num_classes, "input_dim": input_dim, "label_names": list(label_names)}
    (run_dir / "run.json").write_text(json.dumps({"status": "completed", "model_spec": spec}))
    return run_dir


def train_mlp(hidden_sizes: Sequence[int], num_classes: int, seed: int, steps: int = 150) -> MLP:
    """An MLP fitted for a few full-batch Adam steps on the blobs' training split."""
    data = BlobsDataModule(num_classes)
    data.setup()
    train = data.splits["train"]
    torch.manual_seed(seed)
    model = MLP(MLPConfig(hidden_sizes=list(hidden_sizes), dropout=0.0), num_classes=num_classes, input_dim=INPUT_DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(train.inputs), train.labels).backward()
        optimizer.step()
    return model.eval()


def mlp_config(hidden_sizes: Sequence[int]) -> dict:
    return {"_target_": "trustml.models.mlp.MLP", "hidden_sizes": list(hidden_sizes), "dropout": 0.0}


@pytest.fixture
def blobs() -> Callable[..., BlobsDataModule]:
    return BlobsDataModule


@pytest.fixture
def old_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a run directory holding a trained MLP (``hidden_sizes``) for ``num_classes`` blob classes."""
    counter = iter(range(1000))

    def make(
        hidden_sizes: Sequence[int] = (8,),
        num_classes: int = 3,
        label_names: Sequence[str] | None = None,
        seed: int = 0,
        input_dim: int = INPUT_DIM,
    ) -> Path:
        if input_dim == INPUT_DIM:
            model = train_mlp(hidden_sizes, num_classes, seed)
        else:  # a model for other data: untrained, of that input width
            config = MLPConfig(hidden_sizes=list(hidden_sizes), dropout=0.0)
            model = MLP(config, num_classes=num_classes, input_dim=input_dim)
        names = label_names if label_names is not None else [f"c{i}" for i in range(num_classes)]
        run_dir = tmp_path / f"old_run_{next(counter)}"
        return write_run(run_dir, model, mlp_config(hidden_sizes), num_classes, names, input_dim)

    return make


def quiet_trainer(root: Path, epochs: int = 2, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or sanity check (fast, silent tests)."""
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
