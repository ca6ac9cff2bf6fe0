"""``trustml method=pc`` end to end through the CLI: an old run, a PC run against it, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "print_results=false", "model.hidden_sizes=[16]"]


def trustml(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRUSTML_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": python_path}
    return subprocess.run(
        [sys.executable, "-m", "trustml.cli.main", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_pc_run_against_an_old_run(tmp_path) -> None:
    old_dir = tmp_path / "old"
    old = trustml(tmp_path, *FAST, "seed=1", f"hydra.run.dir={old_dir}")
    assert old.returncode == 0, old.stderr
    new_dir = tmp_path / "new"
    new = trustml(
        tmp_path, *FAST, "method=pc", f"method.old_run_dirs=[{old_dir}]", "method.distance=lm", "seed=2",
        f"hydra.run.dir={new_dir}",
    )
    assert new.returncode == 0, new.stderr
    results = json.loads((new_dir / "results.json").read_text())
    assert {"test/nfr", "test/relative_nfr", "test/er_old", "test/er_new", "test/nfi", "test/pfr"} <= set(results)
    assert results["test/er_new"] == pytest.approx(1.0 - results["test/acc"], abs=1e-6)
    report = json.loads((new_dir / "flip_report_test.json").read_text())
    assert len(report["negative_flip_ids"]) == report["counts"]["negative_flips"]
    assert len(report["per_class"]) == 10

    bad = trustml(tmp_path, *FAST, "method=pc", f"method.old_run_dirs=[{tmp_path / 'missing'}]")
    assert bad.returncode == 2
    assert "is not a trustml run directory" in bad.stderr
    empty = trustml(tmp_path, *FAST, "method=pc")
    assert empty.returncode == 2
    assert "method.old_run_dirs is empty" in empty.stderr
