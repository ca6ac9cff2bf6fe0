"""``best.ckpt`` is the best validation epoch and ``last.ckpt`` the final one, whatever the validation metric did."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import compose_train
from trustml.runner import run


def test_last_checkpoint_is_the_final_epoch_and_best_the_best_one(tmp_path: Path) -> None:
    # a large learning rate makes validation accuracy peak early and then fall back, as in an overfit run
    cfg = compose_train(["trainer.max_epochs=6", "seed=0", "optimizer.lr=0.05", "logger=none"], tmp_path)
    results = run(cfg).results
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 5  # epochs count from 0: the sixth and final one
    assert best["epoch"] < last["epoch"]  # with this seed the best validation epoch is an earlier one
    assert not torch.equal(best["state_dict"]["model.body.0.weight"], last["state_dict"]["model.body.0.weight"])
    assert results["val/acc_best"] > 0.8
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
