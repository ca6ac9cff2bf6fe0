"""``method=pc``: cached old logits, flip metrics and reports in a Lightning fit, and clear errors on bad input."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tests.pc.conftest import quiet_trainer
from trustml.errors import CheckpointError, ConfigError
from trustml.losses import focal_distillation_loss, logit_distance, naive_congruent_loss
from trustml.methods.old_model import LogitEnsemble, load_old_model
from trustml.methods.pc import PCConfig, PositiveCongruentTraining
from trustml.metrics import flip_counts
from trustml.models.mlp import MLP, MLPConfig

N_TRAIN, N_VAL, N_TEST = 150, 45, 45


class CountOldModelSamples(pl.Callback):
    """Counts the samples that go through the old model (a forward hook set once it is loaded)."""

    def __init__(self) -> None:
        self.samples = 0
        self.train_batches = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.old_model.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.samples += output.shape[0]

    def on_train_batch_start(self, *args) -> None:
        self.train_batches += 1


def make_method(run_dirs: list[Path], **options) -> PositiveCongruentTraining:
    torch.manual_seed(1)
    model = MLP(MLPConfig(hidden_sizes=[32, 16], dropout=0.0), num_classes=3, input_dim=8)  # not the old architecture
    return PositiveCongruentTraining(
        PCConfig(old_run_dirs=[str(d) for d in run_dirs], **options),
        model=model,
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=3,
    )


def test_fit_calls_old_model_once_per_sample_and_reports_flips(tmp_path, blobs, old_run) -> None:
    method = make_method([old_run()], objective="focal_distillation", distance="kl")
    counter = CountOldModelSamples()
    data = blobs()
    trainer = quiet_trainer(tmp_path, epochs=3, callbacks=[counter])
    trainer.fit(method, datamodule=data)
    assert counter.train_batches == 3 * 5  # 3 epochs of 150 samples in batches of 32
    assert counter.samples == N_TRAIN + N_VAL + N_TEST  # the cache was filled once, before training
    assert {"val/nfr", "val/relative_nfr", "val/er_old", "val/pfr"} <= set(trainer.callback_metrics)
    results = trainer.test(method, datamodule=data, verbose=False)[0]
    assert counter.samples == N_TRAIN + N_VAL + N_TEST  # testing reads the cache too

    test = data.splits["test"]
    with torch.no_grad():
        counts = flip_counts(method.old_model(test.inputs), method.model.eval()(test.inputs), test.labels)
    for name, value in counts.rates().items():
        assert results[f"test/{name}"] == pytest.approx(value, abs=1e-6)
    report = json.loads((tmp_path / "flip_report_test.json").read_text())
    assert report["counts"]["negative_flips"] == counts.negative_flips
    assert all(195 <= i < 240 for i in report["negative_flip_ids"] + report["positive_flip_ids"])
    assert [row["name"] for row in report["per_class"]] == ["c0", "c1", "c2"]
    assert (tmp_path / "flip_report_val.json").is_file()


def test_online_old_logits_recompute_training_batches_every_epoch(tmp_path, blobs, old_run) -> None:
    method = make_method([old_run()], objective="focal_distillation", distance="lm", online_old_logits=True)
    counter = CountOldModelSamples()
    quiet_trainer(tmp_path, epochs=2, callbacks=[counter]).fit(method, datamodule=blobs())
    assert counter.samples == 2 * N_TRAIN + N_VAL + N_TEST


def test_ensemble_of_different_architectures_averages_logits(tmp_path, blobs, old_run) -> None:
    runs = [old_run(hidden_sizes=(8,), seed=0), old_run(hidden_sizes=(16, 8), seed=1)]
    data = blobs()
    data.setup()
    old = load_old_model(runs, num_classes=3, label_names=data.label_names, input_dim=8)
    assert isinstance(old, LogitEnsemble) and len(old.members) == 2
    x = data.splits["val"].inputs
    with torch.no_grad():
        torch.testing.assert_close(old(x), (old.members[0](x) + old.members[1](x)) / 2)
    method = make_method(runs, objective="naive")
    quiet_trainer(tmp_path, epochs=1, callbacks=[]).fit(method, datamodule=data)
    assert method.old_logits.samples_computed == N_TRAIN + N_VAL + N_TEST


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"objective": "untreated"}, lambda new, old, y: F.cross_entropy(new, y, reduction="none")),
        ({"objective": "naive", "beta": 2.0}, lambda new, old, y: naive_congruent_loss(new, old, y, 1.0, 2.0)),
        (
            {"distance": "lm", "weight": 0.5},
            lambda new, old, y: focal_distillation_loss(new, old, y, logit_distance("lm"), 0.5, 1.0, 5.0),
        ),
        (
            {"distance": "ldi", "ldi_top_k": 2, "beta": 0.0},
            lambda new, old, y: focal_distillation_loss(new, old, y, logit_distance("ldi", top_k=2), 1.0, 1.0, 0.0),
        ),
        (
            {"temperature": 4.0},
            lambda new, old, y: focal_distillation_loss(new, old, y, logit_distance("kl", 4.0), 1.0, 1.0, 5.0),
        ),
    ],
)
def test_sample_losses_is_the_configured_objective(old_run, options, expected) -> None:
    method = make_method([old_run()], **options)
    torch.manual_seed(0)
    new, old, y = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"x": torch.zeros(6, 8), "y": y, "index": torch.arange(6), "old_logits": old}
    torch.testing.assert_close(method.sample_losses(new, batch), expected(new, old, y))


def test_zero_old_models_is_an_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="ensemble of zero old models"):
        make_method([])
    with pytest.raises(CheckpointError, match="ensemble of zero old models"):
        load_old_model([], num_classes=3)
    with pytest.raises(CheckpointError, match="ensemble of zero old models"):
        LogitEnsemble([])


def test_missing_run_or_checkpoint_is_an_error(tmp_path, old_run) -> None:
    with pytest.raises(CheckpointError, match="not a trustml run directory"):
        make_method([tmp_path / "nowhere"])
    run = old_run()
    (run / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"old checkpoint .*best.ckpt is missing"):
        make_method([run])
    incomplete = old_run()
    (incomplete / "run.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(CheckpointError, match="status 'failed'"):
        make_method([incomplete])


def test_incompatible_or_unsafe_checkpoint_is_an_error(old_run) -> None:
    run = old_run(hidden_sizes=(8,))
    record = json.loads((run / "run.json").read_text())
    record["model_spec"]["config"]["hidden_sizes"] = [12]  # weights were trained with 8 hidden units
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_old_model([run], num_classes=3)
    garbage = old_run()
    (garbage / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_old_model([garbage], num_classes=3)


def test_class_count_label_map_or_width_mismatch_stops_before_training(tmp_path, blobs, old_run) -> None:
    cases = [
        (old_run(num_classes=4), blobs(), "predicts 4 classes but the new data has 3"),
        (old_run(label_names=["c0", "c2", "c1"]), blobs(), "label map of the old model"),
        (old_run(input_dim=5), blobs(), "reads 5 features but the new data has 8"),
    ]
    for run, data, message in cases:
        counter = CountOldModelSamples()
        with pytest.raises(CheckpointError, match=message):
            quiet_trainer(tmp_path, epochs=1, callbacks=[counter]).fit(make_method([run]), datamodule=data)
        assert counter.train_batches == 0


def test_bad_options_are_config_errors(old_run) -> None:
    run = old_run()
    with pytest.raises(ConfigError, match="method.objective must be one of"):
        make_method([run], objective="distill")
    with pytest.raises(ConfigError, match="method.distance must be one of"):
        make_method([run], distance="cosine")
    with pytest.raises(ConfigError, match="must be >= 0"):
        make_method([run], beta=-1.0)
    cfg = OmegaConf.create({"method": OmegaConf.structured(PCConfig(old_run_dirs=[]))})
    with pytest.raises(CheckpointError, match="method.old_run_dirs is empty"):
        PositiveCongruentTraining.validate_config(cfg)
    cfg.method.old_run_dirs = [str(run)]
    PositiveCongruentTraining.validate_config(cfg)
