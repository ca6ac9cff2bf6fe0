"""``method=bct``: influence loss through the old head, pseudo-classifiers, compatibility report, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from tests.pc.conftest import quiet_trainer
from trustml.errors import CheckpointError, ConfigError
from trustml.losses import class_mean_embeddings, influence_loss
from trustml.methods.bct import BackwardCompatibleTraining, BCTConfig
from trustml.metrics import nearest_neighbor_accuracy
from trustml.models.mlp import MLP, MLPConfig
from trustml.plugin import OptimizerPlugin


def make_method(run_dir: Path | str, num_classes: int = 3, hidden: tuple[int, ...] = (16, 8), **options):
    torch.manual_seed(2)
    model = MLP(MLPConfig(hidden_sizes=list(hidden), dropout=0.0), num_classes=num_classes, input_dim=8)
    return BackwardCompatibleTraining(
        BCTConfig(old_run_dir=str(run_dir), **options),
        model=model,
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=num_classes,
    )


def test_fit_and_compatibility_report(tmp_path, blobs, old_run) -> None:
    method = make_method(old_run(hidden_sizes=(8,)))
    data = blobs()
    trainer = quiet_trainer(tmp_path, epochs=3)
    trainer.fit(method, datamodule=data)
    old = method.old_model
    torch.testing.assert_close(method.old_head[0], old.head.weight)  # same classes: the old head as it is
    results = trainer.test(method, datamodule=data, verbose=False)[0]

    query, gallery = data.splits["test"], data.splits["train"]
    with torch.no_grad():
        new_q, new_g = method.model.embed(query.inputs), method.model.embed(gallery.inputs)
        old_head_on_new = (old.head(new_q).argmax(1) == query.labels).float().mean().item()
        old_g = old.embed(gallery.inputs)
    expected = nearest_neighbor_accuracy(new_q, query.labels, old_g, gallery.labels, "cosine")
    assert results["test/retrieval_new_old"] == pytest.approx(expected)
    assert results["test/retrieval_new_new"] == pytest.approx(
        nearest_neighbor_accuracy(new_q, query.labels, new_g, gallery.labels, "cosine")
    )
    assert results["test/old_head_acc_new"] == pytest.approx(old_head_on_new)
    saved = json.loads((tmp_path / "compatibility.json").read_text())
    assert saved["compatible"] == (saved["new_old"] > saved["old_old"])
    assert results["test/compatible"] == float(saved["compatible"])


def test_training_loss_is_ce_plus_influence(tmp_path, blobs, old_run) -> None:
    method = make_method(old_run(hidden_sizes=(8,)), influence_weight=0.3)
    quiet_trainer(tmp_path, epochs=1).fit(method, datamodule=blobs())
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    emb = method.model.embed(x)
    logits = method.model.head(emb)
    expected = F.cross_entropy(logits, y, reduction="none") + 0.3 * influence_loss(emb, y, *method.old_head)
    torch.testing.assert_close(method.bct_losses(emb, logits, y), expected)


def test_classes_absent_from_old_head_get_class_mean_pseudo_classifier(tmp_path, blobs, old_run) -> None:
    run = old_run(hidden_sizes=(8,), num_classes=2, label_names=["c0", "c1"])
    method = make_method(run, num_classes=3)
    data = blobs(num_classes=3)
    quiet_trainer(tmp_path, epochs=1).fit(method, datamodule=data)
    weight, bias = method.old_head
    assert weight.shape == (3, 8)
    train = data.splits["train"]
    with torch.no_grad():
        mean_c2 = class_mean_embeddings(method.old_model.embed(train.inputs), train.labels, torch.tensor([2]))
    torch.testing.assert_close(weight[2:], mean_c2)
    torch.testing.assert_close(weight[:2], method.old_model.head.weight)
    assert bias[2].item() == 0.0


@pytest.mark.parametrize(
    ("old_options", "new_options", "message"),
    [
        ({"hidden_sizes": (12,)}, {"projection": "none"}, "embeds into 12 dimensions, the new model into 8"),
        ({"num_classes": 4}, {}, "has 4 classes, more than the new data's 3"),
        ({"num_classes": 2, "label_names": ["c1", "c0"]}, {}, "is not the start of the new data's"),
    ],
)
def test_incompatible_old_model_stops_before_training(tmp_path, blobs, old_run, old_options, new_options, message):
    method = make_method(old_run(**old_options), **new_options)
    with pytest.raises(CheckpointError, match=message):
        quiet_trainer(tmp_path).fit(method, datamodule=blobs())
    assert method.old_head is None  # training never started


class NoEmbedding(nn.Module):
    def forward(self, x):
        return x


@dataclass
class FakePerSampleConfig:
    lr: float = 0.1


class FakePerSampleOptimizer(OptimizerPlugin):
    """An optimizer plugin that says it needs per-sample gradients."""

    needs_per_sample_gradients = True
    config_class = FakePerSampleConfig

    def __init__(self, config: FakePerSampleConfig | None = None) -> None:
        self.config = config or FakePerSampleConfig()

    def build(self, params):
        raise AssertionError("never called")


def test_bad_configurations(tmp_path, old_run) -> None:
    run = old_run()
    with pytest.raises(CheckpointError, match="needs method.old_run_dir=<run directory"):
        make_method("")
    with pytest.raises(ConfigError, match="needs the new model to expose embed"):
        BackwardCompatibleTraining(
            BCTConfig(old_run_dir=str(run)), model=NoEmbedding(), optimizer=partial(torch.optim.Adam), num_classes=3
        )
    with pytest.raises(ConfigError, match="per-sample-gradient optimizer"):
        BackwardCompatibleTraining(
            BCTConfig(old_run_dir=str(run)),
            model=MLP(MLPConfig(hidden_sizes=[8]), num_classes=3, input_dim=8),
            optimizer=FakePerSampleOptimizer(),
            num_classes=3,
        )
    cfg = OmegaConf.create(
        {
            "method": OmegaConf.structured(BCTConfig(old_run_dir=str(run))),
            "optimizer": {"_target_": f"{__name__}.FakePerSampleOptimizer"},
        }
    )
    with pytest.raises(ConfigError, match="per-sample-gradient optimizer"):
        BackwardCompatibleTraining.validate_config(cfg)
    cfg.optimizer = {"_target_": "trustml.optim.torch_optimizers.Adam"}
    BackwardCompatibleTraining.validate_config(cfg)
    with pytest.raises(ConfigError, match="method.retrieval_metric must be one of"):
        make_method(run, retrieval_metric="hamming")
    with pytest.raises(ConfigError, match="method.query_split must be one of"):
        make_method(run, query_split="holdout")
