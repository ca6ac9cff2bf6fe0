"""``trustml method=pc`` end to end through the CLI: an old run, a PC run against it, and bad input.

Each ``trustml`` process spends most of its time importing torch and Lightning, so only the two runs go
through the CLI; the refused PC configurations are checked in this process (the CLI's exit code 2 and
one-line message for every refused run are tested in ``tests/core/test_cli.py``), while the old run trains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_train
from trustml.errors import TrustMLError
from trustml.runner import run

ROOT = Path(__file__).resolve().parents[2]
FAST = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "print_results=false", "model.hidden_sizes=[16]"]


class Trustml:
    """``python -m trustml.cli.main ARGS`` started in ``tmp_path`` (run records under ``tmp_path/logs``).

    Its standard output and error go to files, so processes running side by side never block on a full pipe.
    """

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "TRUSTML_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": python_path}
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(tmp_path / f"{name}.stdout", "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trustml.cli.main", *args], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr
            )

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Wait for the process; return its exit code and standard error."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return code, self.stderr_path.read_text()


def test_pc_run_against_an_old_run(tmp_path) -> None:
    old_dir = tmp_path / "old"
    old = Trustml(tmp_path, "old", *FAST, "seed=1", f"hydra.run.dir={old_dir}")
    try:
        for overrides, message in (
            ([f"method.old_run_dirs=[{tmp_path / 'missing'}]"], "is not a trustml run directory"),
            ([], "method.old_run_dirs is empty"),
        ):
            cfg = compose_train([*FAST, "method=pc", *overrides], tmp_path / "refused")
            with pytest.raises(TrustMLError, match=message):
                run(cfg)
    finally:
        old_code, old_err = old.finish()

    assert old_code == 0, old_err
    new_dir = tmp_path / "new"
    new_code, new_err = Trustml(
        tmp_path,
        "new",
        *FAST,
        "method=pc",
        f"method.old_run_dirs=[{old_dir}]",
        "method.distance=lm",
        "seed=2",
        f"hydra.run.dir={new_dir}",
    ).finish()
    assert new_code == 0, new_err
    results = json.loads((new_dir / "results.json").read_text())
    assert {"test/nfr", "test/relative_nfr", "test/er_old", "test/er_new", "test/nfi", "test/pfr"} <= set(results)
    assert results["test/er_new"] == pytest.approx(1.0 - results["test/acc"], abs=1e-6)
    # the PC run measured flips against the very model the old run trained: its error is the old run's
    old_results = json.loads((old_dir / "results.json").read_text())
    assert results["test/er_old"] == pytest.approx(1.0 - old_results["test/acc"], abs=1e-6)
    report = json.loads((new_dir / "flip_report_test.json").read_text())
    assert len(report["negative_flip_ids"]) == report["counts"]["negative_flips"]
    assert len(report["per_class"]) == 10
