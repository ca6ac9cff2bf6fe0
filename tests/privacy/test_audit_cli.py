"""``trustml-audit`` run as a user types it: membership inference on real runs, canary insertion and exposure."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tests.conftest import read_json, run_cli
from trustml.cli.audit import main
from trustml.privacy.audit.canary import candidate_secrets, format_canary, sample_other_secrets
from trustml.privacy.audit.membership_audit import candidate_samples
from trustml.privacy.audit.metrics import attack_metrics
from trustml.privacy.audit.runs import load_audited_run
from trustml.privacy.audit.scoring import logits_on_splits, model_inputs, per_example_losses
from trustml.registry import build_plugin
from trustml.run_record import load_model_from_run

FAST = ["data=digits_tiny", "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=none"]
HALF = ["data.train_subset_fraction=0.5"]


@dataclass
class Outcome:
    """Exit status and captured output of one ``trustml-audit`` call."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def audit(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Call ``trustml-audit``'s entry point in this process (the console script runs the same ``main``)."""

    def call(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A target run on a random half of digits and a sweep of three shadow runs on other halves."""
    root = tmp_path_factory.mktemp("audit")
    target = run_cli(*FAST, *HALF, "data.train_subset_seed=100", cwd=root)
    assert target.returncode == 0, target.stderr
    shadows = run_cli("-m", *FAST, *HALF, "data.train_subset_seed=0,1,2", cwd=root)
    assert shadows.returncode == 0, shadows.stderr
    (target_dir,) = [p.parent for p in root.glob("logs/runs/*/run.json")]
    (sweep_dir,) = list(root.glob("logs/multiruns/*"))
    return {"root": root, "target": target_dir, "shadows": sweep_dir}


def test_membership_audit_reports_loss_and_lira_attacks(
    trained: dict[str, Path], tmp_path: Path, audit: Callable[..., Outcome]
) -> None:
    out = audit("mia", str(trained["target"]), "--shadows", str(trained["shadows"]), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = read_json(tmp_path / "audit.json")
    assert json.loads(out.stdout) == result
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert len(result["shadow_runs"]) == 3 and result["shadow_runs_skipped"] == []
    for attack in ("loss", "lira_offline"):
        metrics = result["attacks"][attack]
        assert 0.0 <= metrics["auc"] <= 1.0
        assert 0.0 <= metrics["tpr@0.1%fpr"] <= metrics["tpr@1%fpr"] <= 1.0

    # Members are exactly the target's training subset; the LOSS AUC is the metric of the model's own losses.
    target = load_audited_run(trained["target"])
    candidates = candidate_samples(target, [])
    is_member = np.isin(candidates.ids, target.train_ids)
    assert result["num_members"] == len(target.train_ids) == int(is_member.sum())
    assert 0 < result["num_members"] < result["num_candidates"] == len(candidates.ids)
    losses = per_example_losses(logits_on_splits(target.model, candidates.splits), candidates.labels)
    expected = attack_metrics(-losses.numpy(), is_member)
    assert result["attacks"]["loss"]["auc"] == pytest.approx(expected["auc"])
    # Offline LiRA scores only candidates with at least two shadows that did not train on them: every test
    # sample, and the training samples in at most one of the three shadow halves.
    assert result["attacks"]["lira_offline"]["num_candidates"] < result["num_candidates"]


def test_membership_audit_without_shadows_runs_the_loss_attack_only(
    trained: dict[str, Path], tmp_path: Path, audit: Callable[..., Outcome]
) -> None:
    out = audit("mia", str(trained["target"]), "--out", str(tmp_path), "--checkpoint", "last")
    assert out.returncode == 0, out.stderr
    result = read_json(tmp_path / "audit.json")
    assert set(result["attacks"]) == {"loss"} and result["checkpoint"] == "last"


def recomputed_test_accuracy(run_dir: Path, checkpoint: str) -> float:
    """The test accuracy of a run's ``checkpoint`` weights, computed here from its recorded config and checkpoint."""
    data = build_plugin("data", OmegaConf.load(run_dir / ".hydra" / "config.yaml").data)
    data.setup("fit")
    test = data.splits["test"]
    model, _ = load_model_from_run(run_dir, checkpoint=checkpoint)
    with torch.no_grad():
        logits = model(model_inputs(model, test.inputs))
    return float((logits.argmax(dim=1) == test.labels).float().mean())


def test_membership_audit_reports_the_accuracy_of_the_attacked_checkpoint(
    trained: dict[str, Path], tmp_path: Path, audit: Callable[..., Outcome], caplog: pytest.LogCaptureFixture
) -> None:
    # A copy of the target whose last checkpoint is a worse model than its best: its output layer's bias
    # favours one class, so the two checkpoints' accuracies differ by far more than rounding.
    run = tmp_path / "target"
    shutil.copytree(trained["target"], run)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    *_, bias = [k for k in last["state_dict"] if k.endswith(".bias")]
    last["state_dict"][bias] = torch.zeros_like(last["state_dict"][bias])
    last["state_dict"][bias][3] = 1e4
    last["epoch"] = 2  # the run's last epoch (trainer.max_epochs=3)
    torch.save(last, run / "checkpoints" / "last.ckpt")

    reported = {}
    for checkpoint in ("best", "last"):
        out = audit("mia", str(run), "--out", str(tmp_path / checkpoint), "--checkpoint", checkpoint)
        assert out.returncode == 0, out.stderr
        result = read_json(tmp_path / checkpoint / "audit.json")
        assert result["checkpoint"] == result["test_acc_checkpoint"] == checkpoint
        assert result["test_acc"] == pytest.approx(recomputed_test_accuracy(run, checkpoint), abs=1e-9)
        stored = torch.load(run / "checkpoints" / f"{checkpoint}.ckpt", map_location="cpu", weights_only=True)
        position = (result["checkpoint_epoch"], result["checkpoint_global_step"])
        assert position == (stored["epoch"], stored["global_step"])
        assert result["run_last_epoch"] == 2
        reported[checkpoint] = result["test_acc"]
    assert "not the end of training" not in caplog.text

    # a last.ckpt from before the run's last epoch (as Lightning >= 2.6 leaves it with save_top_k=1) is named
    last["epoch"] = 0
    torch.save(last, run / "checkpoints" / "last.ckpt")
    out = audit("mia", str(run), "--out", str(tmp_path / "early"), "--checkpoint", "last")
    assert out.returncode == 0, out.stderr
    assert read_json(tmp_path / "early" / "audit.json")["checkpoint_epoch"] == 0
    assert "holds epoch 0 but" in caplog.text and "trained to epoch 2" in caplog.text
    # the best checkpoint's accuracy is what the run's own test measured; the sabotaged last one's is not
    assert reported["best"] == pytest.approx(read_json(run / "results.json")["test/acc"], abs=1e-6)
    assert reported["last"] < 0.2 < reported["best"]  # one class of ten vs a model that learned


def test_audit_refuses_a_directory_that_is_not_a_run(tmp_path: Path, audit: Callable[..., Outcome]) -> None:
    out = audit("mia", str(tmp_path), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.startswith("trustml-audit: error:") and "run.json" in out.stderr
    assert not (tmp_path / "out").exists()


def test_audit_needs_two_shadow_runs(trained: dict[str, Path], tmp_path: Path, audit: Callable[..., Outcome]) -> None:
    one = tmp_path / "one_shadow"
    shutil.copytree(trained["shadows"] / "0", one / "0")
    out = audit("mia", str(trained["target"]), "--shadows", str(one), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and "LiRA needs at least 2" in out.stderr
    assert not (tmp_path / "out" / "audit.json").exists()


def test_audit_refuses_shadows_trained_on_other_data(
    trained: dict[str, Path], tmp_path: Path, audit: Callable[..., Outcome]
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(trained["shadows"], sweep)
    config_path = sweep / "1" / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_path)
    config.data.split_seed = 7
    OmegaConf.save(config, config_path)
    out = audit("mia", str(trained["target"]), "--shadows", str(sweep), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert "other data" in out.stderr and "data.split_seed: target 0, shadow 7" in out.stderr
    assert not (tmp_path / "out" / "audit.json").exists()


def write_text_data(path: Path) -> None:
    """Sixty two-class sentences: weather questions and music requests."""
    rows = [{"text": f"what is the weather in city {i} today", "label": "weather"} for i in range(30)]
    rows += [{"text": f"play song number {i} by the band", "label": "music"} for i in range(30)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_canary_is_inserted_trained_on_and_ranked(tmp_path: Path, audit: Callable[..., Outcome]) -> None:
    source, dest = tmp_path / "source.jsonl", tmp_path / "with_canary.jsonl"
    write_text_data(source)
    inserted = audit(
        "insert-canary",
        str(source),
        str(dest),
        "--label",
        "music",
        "--repetitions",
        "6",
        "--secret-length",
        "3",
        "--seed",
        "4",
    )
    assert inserted.returncode == 0, inserted.stderr
    spec = read_json(Path(str(dest) + ".canary.json"))
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert len(lines) == 66 and sum(row["text"] == spec["sentence"] for row in lines) == 6
    assert spec["sentence"] == format_canary(spec["secret"]) and len(spec["secret"]) == 3

    trained = run_cli(
        "data=text_classification",
        f"data.path={dest}",
        "model=hf_tiny",
        "model.freeze_encoder=false",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "logger=none",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = [p.parent for p in tmp_path.glob("logs/runs/*/run.json")]
    spec_path = str(dest) + ".canary.json"
    out = audit("canary", str(run_dir), "--spec", spec_path, "--out", str(tmp_path / "canary"))
    assert out.returncode == 0, out.stderr
    result = read_json(tmp_path / "canary" / "canary.json")
    assert result["num_candidates"] == 1000
    assert result["exposure"] == pytest.approx(math.log2(1000) - math.log2(result["rank"]))
    assert result["ranks_first"] == (result["rank"] == 1)
    # the accuracy reported beside the rank is that of the ranked checkpoint (best, as results.json's)
    assert result["checkpoint"] == result["test_acc_checkpoint"] == "best"
    assert result["test_acc"] == pytest.approx(recomputed_test_accuracy(run_dir, "best"), abs=1e-9)
    assert result["test_acc"] == pytest.approx(read_json(run_dir / "results.json")["test/acc"], abs=1e-6)
    last = audit("canary", str(run_dir), "--spec", spec_path, "--out", str(tmp_path / "last"), "--checkpoint", "last")
    assert last.returncode == 0, last.stderr
    last_acc = read_json(tmp_path / "last" / "canary.json")["test_acc"]
    assert last_acc == pytest.approx(recomputed_test_accuracy(run_dir, "last"), abs=1e-9)

    # The rank is the secret's place among all 1,000 candidates by the trained model's loss on the label.
    model, model_spec = load_model_from_run(run_dir)
    label = model_spec["label_names"].index("music")
    secrets = candidate_secrets(3)
    with torch.no_grad():
        logits = model(model_inputs(model, [format_canary(s) for s in secrets]))
    losses = F.cross_entropy(logits, torch.full((len(secrets),), label), reduction="none")
    secret_loss = losses[secrets.index(tuple(spec["secret"]))]
    assert result["rank"] == int((losses <= secret_loss).sum())

    # --sample: the rank estimated from 200 sampled candidates (the same draw recomputed here), exact when its
    # interval reaches the top --exact-top
    sampled = audit(
        "canary",
        str(run_dir),
        "--spec",
        spec_path,
        "--out",
        str(tmp_path / "s"),
        "--sample",
        "200",
        "--checkpoint",
        "best",
        "--exact-top",
        "0",
    )
    assert sampled.returncode == 0, sampled.stderr
    estimate = read_json(tmp_path / "s" / "canary.json")
    drawn = sample_other_secrets(tuple(spec["secret"]), 200, seed=0)
    below = int(sum(losses[secrets.index(s)] <= secret_loss for s in drawn))
    assert not estimate["exact"] and estimate["num_sampled"] == 200 and estimate["sampled_at_or_below"] == below
    assert estimate["rank"] == pytest.approx(1 + 999 * below / 200) and estimate["num_candidates"] == 1000
    assert estimate["rank_low"] <= estimate["rank"] <= estimate["rank_high"]
    assert estimate["ranks_first"] is (False if estimate["rank_low"] > 1 else None)
    exact = audit(
        "canary",
        str(run_dir),
        "--spec",
        spec_path,
        "--out",
        str(tmp_path / "e"),
        "--sample",
        "200",
        "--exact-top",
        "1000",
    )
    assert exact.returncode == 0, exact.stderr
    fallback = read_json(tmp_path / "e" / "canary.json")
    assert fallback["exact"] and fallback["rank"] == result["rank"]
    assert fallback["sampled_estimate"]["sampled_at_or_below"] == below
    negative = audit("canary", str(run_dir), "--spec", spec_path, "--out", str(tmp_path / "n"), "--sample", "-1")
    assert negative.returncode == 2 and "--sample -1: give a number of candidates" in negative.stderr
    assert not (tmp_path / "n").exists()

    missing = audit("canary", str(run_dir), "--spec", str(tmp_path / "nope.json"), "--out", str(tmp_path / "c2"))
    assert missing.returncode == 2 and "canary spec not found" in missing.stderr
    assert not (tmp_path / "c2").exists()


def test_canary_label_must_occur_in_the_data(tmp_path: Path) -> None:
    source = tmp_path / "source.jsonl"
    write_text_data(source)
    # through the installed console script, as a user types it
    out = run_cli(
        "insert-canary",
        str(source),
        str(tmp_path / "d.jsonl"),
        "--label",
        "news",
        "--repetitions",
        "2",
        cwd=tmp_path,
        tool="trustml-audit",
    )
    assert out.returncode == 2 and "canary label 'news' does not occur" in out.stderr
    assert not (tmp_path / "d.jsonl").exists()
