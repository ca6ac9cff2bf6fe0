"""Run records in-process: model rebuilding from a run directory, loggers, failed-run bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from trustml.errors import CheckpointError, DataError
from trustml.run_record import RunRecord, load_model_from_run
from trustml.runner import run


def _completed_run(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "run"
    cfg = compose_train(["trainer.max_epochs=1", *overrides], run_dir)
    outcome = run(cfg)
    record = RunRecord(run_dir)
    record.start(seed=0, seed_source="config", overrides=overrides, source_dir=tmp_path)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    return run_dir


def test_model_rebuilt_from_run_gives_the_same_predictions(tmp_path: Path) -> None:
    run_dir = _completed_run(tmp_path, ["model.hidden_sizes=[32]", "logger=tensorboard"])
    model, spec = load_model_from_run(run_dir)
    assert spec["num_classes"] == 10 and spec["label_names"][0] == "0"
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.head.weight, state["model.head.weight"])
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_the_mlflow_logger_records_the_run_in_a_local_store(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="needs the loggers extra (mlflow-skinny)")
    run_dir = _completed_run(tmp_path, ["model.hidden_sizes=[32]", "logger=mlflow"])
    store = next(run_dir.rglob("mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    results = json.loads((run_dir / "results.json").read_text())
    assert runs.loc[0, "metrics.test/acc"] == pytest.approx(results["test/acc"])


def test_loading_from_an_unfinished_or_foreign_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a trustml run directory"):
        load_model_from_run(tmp_path)
    record = RunRecord(tmp_path)
    record.start(seed=1, seed_source="config", overrides=[], source_dir=tmp_path)
    record.fail(DataError("boom"))
    with pytest.raises(CheckpointError, match="status 'failed'"):
        load_model_from_run(tmp_path)
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["error"]["type"] == "DataError" and data["end_time"]


def test_failure_removes_a_partial_results_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    record = RunRecord(tmp_path)
    record.start(seed=1, seed_source="config", overrides=[], source_dir=tmp_path)
    record.fail(RuntimeError("crash"))
    assert not (tmp_path / "results.json").exists()


def test_same_seed_same_metrics_in_process(tmp_path: Path) -> None:
    a = run(compose_train(["trainer.max_epochs=2", "seed=5"], tmp_path / "a")).results
    b = run(compose_train(["trainer.max_epochs=2", "seed=5"], tmp_path / "b")).results
    c = run(compose_train(["trainer.max_epochs=2", "seed=6"], tmp_path / "c")).results
    timing = {"time_per_epoch_s", "train_time_s"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert a["test/loss"] != c["test/loss"]
