"""``trustml federation=fedavg ...`` through the framework's runner: config, hooks, results and run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trustml.federation.strategies  # noqa: F401 - registers federation=fedavg|fedprox|fedadam|fedyogi
from tests.conftest import compose_train
from trustml.errors import ConfigError
from trustml.runner import run


def test_runner_trains_fedavg_and_reports_federation_results(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "federation=fedavg",
            "federation.rounds=3",
            "federation.partition.num_clients=8",
            "federation.selection.clients_per_round=4",
            "federation.partition.kind=dirichlet_label",
            "optimizer=sgd",
            "trainer.max_epochs=1",
            "logger=none",
        ],
        tmp_path,
    )
    outcome = run(cfg, {"federation": "fedavg"})
    results = outcome.results
    assert results["federation/rounds"] == 3.0 and results["federation/aggregated_rounds"] == 3.0
    assert results["test/acc"] == pytest.approx(results["federation/final_test_acc"], abs=1e-6)
    history = [json.loads(line) for line in (tmp_path / "federation" / "rounds.jsonl").read_text().splitlines()]
    assert [r["answered"] for r in history] == [4, 4, 4]
    assert not (tmp_path / "metrics.csv").exists()  # server-side callbacks do not run inside client fits
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_runner_refuses_an_impossible_federation_config_before_building_anything(tmp_path: Path) -> None:
    cfg = compose_train(
        ["federation=fedavg", "federation.privacy.noise_multiplier=1.0", "federation.privacy.clip_norm=1.0"], tmp_path
    )
    with pytest.raises(ConfigError, match="needs federation.selection.scheme=poisson"):
        run(cfg, {"federation": "fedavg"})


#: The README's DP x federation composition example (its command line, minus the program name).
README_DP_FEDERATION = (
    "method=erm optimizer=dp_sgd federation=fedavg data=digits federation.partition.num_clients=10 "
    "federation.selection.clients_per_round=5 data.batch_size=32 optimizer.lr=0.5"
)


def test_the_readme_dp_federation_example_learns(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"trustml {README_DP_FEDERATION}" in readme, "the README must show the composition this test guards"
    cfg = compose_train(
        [*README_DP_FEDERATION.split(), "seed=0", "optimizer.deterministic=true", "logger=none"], tmp_path
    )
    results = run(cfg, {"federation": "fedavg"}).results
    assert results["test/acc"] >= 0.70, results
    history = [json.loads(line) for line in (tmp_path / "federation" / "rounds.jsonl").read_text().splitlines()]
    # every aggregated update trained: no round averages in a client whose budget was already spent
    assert all(r["failed"] == 0 and r["aggregated"] for r in history)
    assert results["federation/aggregated_rounds"] == len(history) == 20
    assert 7.9 <= results["federation/client_epsilon_max"] <= 8.0
