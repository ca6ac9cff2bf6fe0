"""DP-SGD through the ``trustml`` command under Lightning ``strategy=ddp`` on 2 CPU processes (gloo) vs 1 process.

The two-process run is the real CLI in a subprocess (``python -m trustml.cli.main ...``: Lightning's launcher starts
process 1 by running that command again, and process 1 must neither take the run lock nor write the run record);
the one-process run of the same composition and seed runs in this process. Same seed, same deterministic batches
and noise: both runs must report the same privacy accounting and end with the same weights up to float tolerance,
and the DDP model must have learned digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, compose_train
from trustml.runner import run

#: The composition both runs train (deterministic: the same Poisson batches and noise for the same seed).
OVERRIDES = [
    "data=digits",
    "data.batch_size=64",
    "model=mlp",
    "model.dropout=0.0",
    "method=erm",
    "optimizer=dp_sgd",
    "optimizer.lr=0.5",
    "optimizer.deterministic=true",
    "optimizer.target_epsilon=8",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "logger=none",
    "seed=3",
]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_ddp_on_two_processes_accounts_and_updates_like_one_process_and_learns(tmp_path: Path) -> None:
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ddp = ["trainer.devices=2", "+trainer.strategy=ddp", "+trainer.use_distributed_sampler=false"]
    command = [sys.executable, "-m", "trustml.cli.main", *OVERRIDES, *ddp, f"hydra.run.dir={two}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    record = json.loads((two / "run.json").read_text())
    assert record["status"] == "completed", record
    one = tmp_path / "one"
    outcome = run(compose_train([*OVERRIDES, "trainer.devices=1"], one), {"optimizer": "dp_sgd"})
    results = {"one": outcome.results, "two": json.loads((two / "results.json").read_text())}

    # (b) the accountant of the DDP run counts the global data set and one step per update, like one process
    for key in ("epsilon", "sample_rate", "dp_steps", "noise_multiplier", "delta"):
        assert results["two"][key] == results["one"][key], key
    assert results["two"]["sample_rate"] == pytest.approx(64 / 1078)  # data.batch_size / N of all of digits' train
    assert results["two"]["dp_steps"] == 3 * round(1078 / 64)
    assert 7.9 <= results["two"]["epsilon"] <= 8.0
    # (a) the same updates up to float tolerance (all-reduced sums in another order), hence the same model
    weights = {name: _weights(d) for name, d in (("one", one), ("two", two))}
    assert weights["one"].keys() == weights["two"].keys()
    for name, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][name], value, rtol=1e-4, atol=1e-5)
    # (d) it learned: digits at epsilon 8 (a majority-class guess is about 0.10)
    assert results["two"]["test/acc"] >= 0.85, results["two"]
    assert results["two"]["test/acc"] == pytest.approx(results["one"]["test/acc"], abs=0.01)
