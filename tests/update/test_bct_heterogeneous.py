"""``method=bct`` with an old model of another size: a learned projection, and text encoders of different depth."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.pc.conftest import quiet_trainer
from trustml.errors import ConfigError
from trustml.methods.bct import BackwardCompatibleTraining, BCTConfig
from trustml.metrics import nearest_neighbor_accuracy
from trustml.models.mlp import MLP, MLPConfig


def make(run_dir: Path, hidden: list[int], **options) -> BackwardCompatibleTraining:
    torch.manual_seed(3)
    model = MLP(MLPConfig(hidden_sizes=hidden, dropout=0.0), num_classes=3, input_dim=8)
    return BackwardCompatibleTraining(
        BCTConfig(old_run_dir=str(run_dir), **options),
        model=model,
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=3,
    )


def fit_and_test(tmp_path: Path, run_dir: Path, data, **options) -> tuple[BackwardCompatibleTraining, dict]:
    method = make(run_dir, hidden=[16, 4], **options)  # the old model embeds into 12 dims, the new into 4
    trainer = quiet_trainer(tmp_path, epochs=15)
    trainer.fit(method, datamodule=data)
    return method, trainer.test(method, datamodule=data, verbose=False)[0]


def test_projection_maps_a_narrower_new_model_into_the_old_space(tmp_path: Path, blobs, old_run) -> None:
    run, data = old_run(hidden_sizes=(12,)), blobs()
    method, results = fit_and_test(tmp_path, run, data)
    assert method.projection is not None and method.projection.weight.shape == (12, 4)
    assert results["test/acc"] >= 0.9
    assert results["test/old_head_acc_new"] >= 0.9  # the frozen old classifier reads the projected new embeddings
    query, gallery = data.splits["test"], data.splits["train"]
    with torch.no_grad():
        new_q = method.projection(method.model.embed(query.inputs))
        old_g = method.old_model.embed(gallery.inputs)
    expected = nearest_neighbor_accuracy(new_q, query.labels, old_g, gallery.labels)
    assert results["test/retrieval_new_old"] == pytest.approx(expected)
    # without the influence loss the projection learns nothing: the old classifier reads the new embeddings badly
    _, independent = fit_and_test(tmp_path, run, data, influence_weight=0.0)
    assert independent["test/old_head_acc_new"] <= results["test/old_head_acc_new"] - 0.2


def test_projection_option(old_run) -> None:
    with pytest.raises(ConfigError, match="method.projection must be one of"):
        BCTConfig(old_run_dir=str(old_run()), projection="mlp")


def test_text_encoders_of_different_depth_share_inputs(massive_run) -> None:
    old_dir, old = massive_run("gallery", "old", epochs=10)
    new_dir, new = massive_run(
        "query", "updated", "model.num_layers=1", "method=bct", f"method.old_run_dir={old_dir}", epochs=10
    )
    assert new["test/acc"] >= 0.85  # the 1-layer model learned the update's intents
    assert new["test/old_head_acc_new"] >= 0.6  # and its embeddings still work with the 2-layer model's classifier
    assert 0.0 <= new["test/retrieval_new_old"] <= 1.0
