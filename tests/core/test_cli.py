"""``trustml`` and ``trustml-report`` run as subprocesses, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import only_run_dir, read_json, run_cli

FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
TIMING_KEYS = {"time_per_epoch_s", "train_time_s"}


def test_help_lists_every_group_and_plugin(tmp_path: Path) -> None:
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for group in (
        "data:",
        "model:",
        "method:",
        "optimizer:",
        "federation:",
        "trainer:",
        "logger:",
        "callbacks:",
        "paths:",
        "experiment:",
        "hparams_search:",
        "debug:",
    ):
        assert f"\n  {group}" in out.stdout
    for plugin in (
        "digits",
        "text_classification",
        "topical_chat_sentiment",
        "mlp",
        "hf_encoder",
        "erm",
        "adam",
        "sgd",
        "none",
        "digits_erm",
        "fast_dev_run",
    ):
        assert f"    {plugin} " in out.stdout or f"    {plugin}\n" in out.stdout


def test_single_run_writes_a_complete_record(tmp_path: Path) -> None:
    out = run_cli(*FAST, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dir = only_run_dir(tmp_path)
    record = read_json(run_dir / "run.json")
    assert record["status"] == "completed"
    assert record["seed_source"] == "drawn" and isinstance(record["seed"], int)
    for key in ("git", "packages", "python", "platform", "device", "start_time", "end_time", "overrides", "model_spec"):
        assert record[key] is not None, key
    assert record["packages"]["torch"].startswith("2.13.0")
    results = read_json(run_dir / "results.json")
    assert 0.5 < results["test/acc"] <= 1.0 and results["epochs"] == 2
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3 and "val/acc" in metrics[0] and "epoch_time_s" in metrics[0]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "test/acc" in out.stdout  # the results table


def test_rerun_from_saved_config_reproduces_metrics(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = run_cli(*FAST, cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "a")
    (tmp_path / "b").mkdir()
    rerun_dir = tmp_path / "b" / "logs" / "reruns" / "1"
    again = run_cli(
        "--config-dir",
        str(run_dir / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir={rerun_dir}",
        cwd=tmp_path / "b",
    )
    assert again.returncode == 0, again.stderr
    original, reproduced = read_json(run_dir / "results.json"), read_json(rerun_dir / "results.json")
    assert {k: v for k, v in original.items() if k not in TIMING_KEYS} == {
        k: v for k, v in reproduced.items() if k not in TIMING_KEYS
    }
    assert read_json(rerun_dir / "run.json")["seed"] == read_json(run_dir / "run.json")["seed"]


def test_a_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_cli("seed=3", *FAST, cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr
    last = only_run_dir(tmp_path / "a") / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        "seed=3",
        f"ckpt_path={last}",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path / "b",
    )
    assert resumed.returncode == 0, resumed.stderr
    run_dir = only_run_dir(tmp_path / "b")
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["2"]  # epochs 0 and 1 came from the checkpoint
    assert read_json(run_dir / "results.json")["test/acc"] > 0.5


def test_sweep_summary_and_report(tmp_path: Path) -> None:
    out = run_cli("-m", "method=erm", "data=digits", "seed=1,2", *FAST, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sweep_dirs = list((tmp_path / "logs" / "multiruns").iterdir())
    assert len(sweep_dirs) == 1
    sweep = sweep_dirs[0]
    for job in ("0", "1"):
        assert read_json(sweep / job / "run.json")["status"] == "completed"
        assert (sweep / job / "results.json").is_file()
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "test/acc" in summary[0] and "seed" in summary[0]
    assert "| seed |" in (sweep / "summary.md").read_text() or "seed" in (sweep / "summary.md").read_text()
    report = run_cli(str(sweep), cwd=tmp_path, tool="trustml-report")
    assert report.returncode == 0, report.stderr
    assert (sweep / "report.md").is_file()
    assert list(sweep.glob("*.png")), "the report has no plot"
    single = run_cli(str(sweep / "0"), cwd=tmp_path, tool="trustml-report")
    assert single.returncode == 0 and list((sweep / "0").glob("*.png"))


def test_report_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    out = run_cli(str(tmp_path), cwd=tmp_path, tool="trustml-report")
    assert out.returncode == 2
    assert "not a trustml run or sweep" in out.stderr and "Traceback" not in out.stderr


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_INPUTS = {
    "unknown plugin": (["method=nonexistent"], "Could not find 'method/nonexistent'"),
    "wrong-typed override": (["optimizer.lr=fast"], "optimizer.lr"),
    "impossible combination": (
        ["data=text_classification", "data.path=DATA", "model=mlp"],
        "model=mlp works on ['features'] inputs but data=text_classification yields 'text'",
    ),
    "missing data file": (["data=text_classification", "data.path=missing.jsonl", "model=hf_encoder"], "missing.jsonl"),
    "malformed JSONL line": (
        ["data=text_classification", "data.path=BAD", "model=hf_encoder"],
        "bad.jsonl:3: malformed JSON",
    ),
    "untrusted target": (["model._target_=os.system"], "not from a trusted module"),
    "missing checkpoint to resume from": (["ckpt_path=gone.ckpt"], "ckpt_path=gone.ckpt"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_message_and_a_failed_record(case: str, tmp_path: Path) -> None:
    overrides, expected = BAD_INPUTS[case]
    good = _jsonl(tmp_path / "good.jsonl", [json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(20)])
    bad = _jsonl(
        tmp_path / "bad.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}', '{"text": "c",']
    )
    overrides = [o.replace("=DATA", f"={good}").replace("=BAD", f"={bad}") for o in overrides]
    out = run_cli(*overrides, *FAST, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.count("trustml: error:") == 1
    run_dir = only_run_dir(tmp_path)
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and expected.split(":")[0] in record["error"]["message"]
    assert not (run_dir / "results.json").exists()


def test_a_failing_sweep_job_is_recorded_and_the_others_run(tmp_path: Path) -> None:
    out = run_cli("-m", "data.batch_size=0,64", *FAST, cwd=tmp_path)
    assert out.returncode == 2
    assert "job 0 failed: data.batch_size must be positive" in out.stderr and "Traceback" not in out.stderr
    sweep = next((tmp_path / "logs" / "multiruns").iterdir())
    assert read_json(sweep / "0" / "run.json")["status"] == "failed" and not (sweep / "0" / "results.json").exists()
    assert read_json(sweep / "1" / "run.json")["status"] == "completed"
    assert "| failed |" in (sweep / "summary.md").read_text()
