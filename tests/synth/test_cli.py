"""The trustml-synth Hydra app and the synthesis pipeline behind it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trustml.cli.synth import run
from trustml.errors import ConfigError
from trustml.synth.formats import load_utterances
from trustml.synth.synthesis import SynthesisConfig, select_golden, synthesize

CONF = Path(__file__).resolve().parents[2] / "conf"
ROOT = CONF.parent


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="synth", overrides=list(overrides))


def test_run_writes_grammar_dataset_and_stats(tmp_path: Path, toy_yaml: Path) -> None:
    catalogs = tmp_path / "catalogs"
    catalogs.mkdir()
    (catalogs / "genre.txt").write_text("pop\nblues\n", encoding="utf-8")
    cfg = _cfg(
        f"golden={toy_yaml}", f"catalogs={catalogs}", "budget_per_intent=40", "output.formats=[jsonl,rasa,snips]"
    )
    report = run(cfg, tmp_path / "out")
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "grammar.txt",
        "grammar.json",
        "dataset.jsonl",
        "dataset.rasa.yml",
        "dataset.snips.json",
        "stats.json",
    }
    data = load_utterances(out / "dataset.jsonl")
    assert len(data) == 13 + 80 and report["generated"] == 80
    assert Counter(map(str, load_utterances(out / "dataset.rasa.yml"))) == Counter(map(str, data))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["grammar"]["total"]["rules"] > 0 and stats["unique_sentences"]["PlayMusic"] > 8
    assert sum(r["allocated"] for r in stats["allocation"]["patterns"]) == 80
    assert "blues" in (out / "grammar.txt").read_text()
    assert "threshold" in stats["resampling"]


def test_borrow_and_grammar_allocation_groups(tmp_path: Path, toy_yaml: Path) -> None:
    borrow = run(_cfg(f"golden={toy_yaml}", "synth/allocation=borrow", "budget_per_intent=8"), tmp_path / "b")
    rows = {r["pattern"]: r["allocated"] for r in borrow["allocation"]["patterns"] if r["intent"] == "PlayMusic"}
    assert rows["other + genre + other"] == 5  # 5 of the 8 PlayMusic golden utterances
    plain = run(
        _cfg(
            f"golden={toy_yaml}",
            "synth/allocation=grammar",
            "resampling.enabled=false",
            "include_golden=false",
            "budget_per_intent=10",
        ),
        tmp_path / "g",
    )
    assert plain["dataset"] == 20 and plain["allocation"]["patterns"][0]["allocated"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "set golden=<file>"),
        (["output.formats=[csv]"], "output.formats has unknown"),
        (["induction.search=sideways"], "induction.search"),
        (["+induction.beam=3"], "bad 'induction' options"),
        (["resampling.threshold=2"], "threshold must lie in"),
        (["allocation.strategy=magic"], "allocation.strategy must be one of"),
        (["catalog_match=fuzzy"], "catalog_match must be one of"),
    ],
)
def test_bad_options_raise_config_errors(tmp_path: Path, toy_yaml: Path, overrides: list[str], message: str) -> None:
    golden = [] if not overrides else [f"golden={toy_yaml}"]
    cfg = _cfg(*golden, *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path / "out")


def test_select_golden_is_seeded_per_intent(toy) -> None:
    a, b = select_golden(toy, 3, seed=1), select_golden(toy, 3, seed=1)
    assert a == b and len(a) == 6
    assert select_golden(toy, None, seed=0) == toy


def test_synthesize_without_golden_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no golden utterances"):
        synthesize([], {}, SynthesisConfig())


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "trustml.cli.synth",
        f"--config-path={CONF}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *args,
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_command_line_app(tmp_path: Path, toy_yaml: Path) -> None:
    done = _cli(tmp_path, f"golden={toy_yaml}", "budget_per_intent=5")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "dataset.jsonl").exists()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "completed" and record["task"] == "trustml-synth" and record["seed"] == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["generated"] == 10
    bad = tmp_path / "bad.txt"
    bad.write_text("## PlayMusic\nplay [pop(genre)\n", encoding="utf-8")
    failed = _cli(tmp_path, f"golden={bad}")
    assert failed.returncode == 2
    assert f"trustml-synth: error: {bad}:2:6: unbalanced '['" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_budget_stop_and_progress_are_reported(tmp_path: Path, toy_yaml: Path, capsys, caplog) -> None:
    """A time budget ends induction with the grammar reached so far, and the report and the log say so; the
    progress bar shows induction steps and sampled sentences."""
    cfg = _cfg(f"golden={toy_yaml}", "budget_per_intent=30", "induction.time_budget_s=1e-9", "progress=true")
    with caplog.at_level("WARNING"):
        report = run(cfg, tmp_path / "out")
    assert report["induction_stopped_early"] == ["GetWeather", "PlayMusic"]
    assert {t["stopped"] for t in report["induction"]} == {"time_budget"}
    assert report["generated"] == 60 and report["unique_sentences_exact"] == {"GetWeather": True, "PlayMusic": True}
    assert "stopped at its time budget" in caplog.text
    err = capsys.readouterr().err
    assert "induce PlayMusic (8 utterances)" in err and "sample" in err
    with pytest.raises(ConfigError, match="progress must be true, false or auto"):
        run(_cfg(f"golden={toy_yaml}", "progress=sometimes"), tmp_path / "bad")
