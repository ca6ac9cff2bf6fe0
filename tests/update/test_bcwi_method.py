"""``method=bcwi`` end to end on a tiny MASSIVE-format update, and its refusals."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.pc.conftest import quiet_trainer
from trustml.errors import CheckpointError, ConfigError
from trustml.methods.bcwi import BackwardCompatibleWeightInterpolation, BCWIConfig
from trustml.methods.interpolation import AlphaResult, interpolate, select_alpha
from trustml.models.mlp import MLP, MLPConfig
from trustml.run_record import load_model_from_run, load_state_dict


def test_bcwi_update_learns_chooses_alpha_by_the_rule_and_reports(massive_run) -> None:
    old_dir, old = massive_run("old", "old", epochs=10)
    assert old["test/acc"] >= 0.65  # 3 of the 4 intents are learnable from the old data (75% at most)
    new_dir, new = massive_run(
        "new",
        "updated",
        "method=bcwi",
        f"method.old_run_dirs=[{old_dir}]",
        "method.alphas=[0,0.25,0.5,0.75,1]",
        "method.accuracy_tolerance=0.05",
        epochs=10,
    )
    assert new["test/new_acc"] >= 0.9  # the untreated update learned all four intents
    summary = json.loads((new_dir / "bcwi.json").read_text())
    val = [AlphaResult(**row) for row in summary["val"]]
    assert [r.alpha for r in val] == [0.0, 0.25, 0.5, 0.75, 1.0]
    chosen = select_alpha(val, 0.05)
    assert summary["chosen_alpha"] == new["test/bcwi_alpha"] == chosen.alpha
    reference = val[0].accuracy
    assert chosen.accuracy >= reference - 0.05
    assert all(r.nfr >= chosen.nfr for r in val if r.accuracy >= reference - 0.05)
    tested = {row["alpha"]: row for row in summary["test"]}
    assert new["test/acc"] == pytest.approx(tested[chosen.alpha]["accuracy"], abs=1e-6)
    assert new["test/nfr"] == pytest.approx(tested[chosen.alpha]["nfr"], abs=1e-6)
    assert tested[1.0]["nfr"] == 0.0 and tested[1.0]["accuracy"] == pytest.approx(old["test/acc"], abs=1e-6)
    # the saved interpolated weights are exactly theta(alpha) of the old and the trained new weights
    old_state = load_model_from_run(old_dir)[0].state_dict()
    expected = interpolate(old_state, load_state_dict(new_dir / "checkpoints" / "best.ckpt"), chosen.alpha)
    saved = load_state_dict(new_dir / "checkpoints" / "interpolated.ckpt")
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    report = (new_dir / "update_report.md").read_text()
    assert "| new (untreated) |" in report and f"bcwi plain (alpha {chosen.alpha:g})" in report
    assert (new_dir / "bcwi_sweep.png").read_bytes()[:4] == b"\x89PNG"

    # post hoc: the Fisher-weighted variant of the same trained new model, without training it again
    _, post_hoc = massive_run(
        "fisher_post_hoc",
        "updated",
        "method=bcwi",
        f"method.old_run_dirs=[{old_dir}]",
        f"method.new_run_dir={new_dir}",
        "method.weighting=fisher",
        "method.fisher_max_samples=30",
        "method.alphas=[0,0.5,0.9,1]",
        epochs=0,
    )
    assert post_hoc["test/new_acc"] == new["test/new_acc"] and post_hoc["test/new_nfr"] == new["test/new_nfr"]

    # Fisher-weighted soup of this run and another new run
    _, fisher = massive_run(
        "fisher_soup",
        "updated",
        "method=bcwi",
        f"method.old_run_dirs=[{old_dir}]",
        "method.weighting=fisher",
        "method.fisher_max_samples=30",
        f"method.soup_run_dirs=[{new_dir}]",
        "method.alphas=[0,0.5,0.9,1]",
        "method.sweep_test=false",
        epochs=10,
        seed=1,
    )
    assert fisher["test/new_acc"] >= 0.9  # the soup of two fine-tuned models still classifies
    assert fisher["test/bcwi_alpha"] in (0.0, 0.5, 0.9, 1.0)


def mlp(hidden: list[int]) -> MLP:
    torch.manual_seed(0)
    return MLP(MLPConfig(hidden_sizes=hidden, dropout=0.0), num_classes=3, input_dim=8)


def test_another_architecture_is_refused_before_training(tmp_path: Path, blobs, old_run) -> None:
    method = BackwardCompatibleWeightInterpolation(
        BCWIConfig(old_run_dirs=[str(old_run(hidden_sizes=(8,)))]),
        model=mlp([16]),
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=3,
    )
    with pytest.raises(CheckpointError, match=r"same architecture.*method=pc"):
        quiet_trainer(tmp_path).fit(method, datamodule=blobs())
    assert not method.initialised_from_old


def test_init_from_old_starts_fine_tuning_at_the_old_weights(tmp_path: Path, blobs, old_run) -> None:
    run = old_run(hidden_sizes=(8,))
    method = BackwardCompatibleWeightInterpolation(
        BCWIConfig(old_run_dirs=[str(run)]), model=mlp([8]), optimizer=partial(torch.optim.SGD, lr=0.0), num_classes=3
    )
    quiet_trainer(tmp_path, epochs=1).fit(method, datamodule=blobs())
    old = load_model_from_run(run)[0].state_dict()
    assert all(torch.equal(method.model.state_dict()[k], v) for k, v in old.items())  # lr 0: still the old model


def test_bad_options(old_run) -> None:
    run = str(old_run())
    with pytest.raises(ConfigError, match="interpolates towards one old model"):
        BCWIConfig(old_run_dirs=[run, run])
    with pytest.raises(ConfigError, match="method.alphas must contain 0"):
        BCWIConfig(old_run_dirs=[run], alphas=[0.5, 1.0])
    with pytest.raises(ConfigError, match=r"method.alphas must be a non-empty list of values in \[0, 1\]"):
        BCWIConfig(old_run_dirs=[run], alphas=[0.0, 1.5])
    with pytest.raises(ConfigError, match="method.weighting must be one of"):
        BCWIConfig(old_run_dirs=[run], weighting="hessian")
