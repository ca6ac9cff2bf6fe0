"""Every experiment config composes and runs end to end with ``fast_dev_run`` (in-process)."""

from __future__ import annotations

import importlib.util
import json
import math
from importlib.resources import files
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, TINY_BERT, compose_train
from trustml.errors import ConfigError
from trustml.registry import load_plugins, plugins
from trustml.runner import check_compatibility, plugin_classes, run

EXPERIMENTS = sorted(e.name[:-5] for e in (files("trustml.conf") / "experiment").iterdir() if e.name.endswith(".yaml"))

#: Extra overrides an experiment needs in a test (its data file, a tiny encoder instead of MiniLM).
NEEDS: dict[str, list[str]] = {
    "text_classification_minilm": [f"model.random_init_config={TINY_BERT}"],
    "topical_chat_sentiment_minilm": [f"model.random_init_config={TINY_BERT}", "data.max_conversations=12"],
    "knobs_topical_chat": [
        "model.warm_start=null",
        "model.random_init_config={model_type:bart,d_model:16,encoder_layers:1,decoder_layers:1,"
        "encoder_attention_heads:2,decoder_attention_heads:2,encoder_ffn_dim:32,decoder_ffn_dim:32,"
        "max_position_embeddings:256}",
        "data.max_eval_examples=4",
    ],
}


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": f"{w} movie number {i}", "label": w} for i in range(30) for w in ("great", "awful", "fine")]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_every_experiment_is_covered() -> None:
    assert {"digits_erm", "text_classification_minilm", "topical_chat_sentiment_minilm"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_with_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    for prefix, folder in (("topical_chat", "topical_chat"), ("knobs_topical_chat", "topical_chat"), ("bold", "bold")):
        if experiment.startswith(prefix) and not (SHARED_DATA / folder).is_dir():
            pytest.skip(f"needs the development data at {SHARED_DATA / folder}")
    overrides = [f"experiment={experiment}", "debug=fast_dev_run", *NEEDS.get(experiment, [])]
    if experiment.startswith("text_classification"):
        overrides.append(f"data.path={_text_file(tmp_path)}")
    cfg = compose_train(overrides, tmp_path / "run")
    outcome = run(cfg)
    if experiment.endswith("_lm"):  # language models: no classes, a perplexity
        assert math.isfinite(outcome.results["test/perplexity"])
        return
    if experiment.startswith("knobs_"):  # generation only: generated examples and a reference perplexity
        assert outcome.results["test/examples"] > 0 and math.isfinite(outcome.results["test/reference_perplexity"])
        return
    assert 0.0 <= outcome.results["test/acc"] <= 1.0
    assert outcome.model_spec["num_classes"] >= 2


load_plugins()
METHODS, OPTIMIZERS, FEDERATIONS = (sorted(plugins(g)) for g in ("method", "optimizer", "federation"))
#: The full grid for erm; every other method with every optimizer (centrally) and every federation (Adam).
COMBINATIONS = sorted(
    {("erm", o, f) for o in OPTIMIZERS for f in FEDERATIONS}
    | {(m, o, "none") for m in METHODS for o in OPTIMIZERS}
    | {(m, "adam", f) for m in METHODS for f in FEDERATIONS}
)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed one-epoch digits run: the old model of methods that update one (pc, bcwi, bct)."""
    from trustml.run_record import RunRecord

    run_dir = tmp_path_factory.mktemp("old") / "run"
    outcome = run(compose_train(["trainer.max_epochs=1"], run_dir))
    record = RunRecord(run_dir)
    record.start(seed=0, seed_source="config", overrides=[], source_dir=run_dir)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    return run_dir


def method_overrides(method: str, old_run: Path) -> list[str]:
    """What a method needs beyond its defaults (the old model of an update)."""
    old_runs = [f"method.old_run_dirs=[{old_run}]"]
    return {"pc": old_runs, "bcwi": old_runs, "bct": [f"method.old_run_dir={old_run}"]}.get(method, [])


def refusal(method: str, optimizer: str, federation: str) -> str | None:
    """For a combination that cannot work, a phrase of the reason it must be refused with at start-up."""
    if method in (
        "seq2seq",
        "attention_swap",
        "knob_generator",
    ):  # generation objectives: refused on classification data
        return rf"method={method} works on \['seq2seq'\] inputs but data=digits yields 'features'"
    if method in ("lm", "distill_lm"):  # language-model objectives: refused on classification data (tests/lm)
        return rf"method={method} works on \['lm_text'\] inputs but data=digits yields 'features'"
    if method == "tagging":  # word tagging: refused on classification data (tests/federation/test_tagging.py)
        return r"method=tagging works on \['text'\] inputs but data=digits yields 'features'"
    if optimizer.startswith("dp_") and method in ("bct", "lqf"):  # lqf: no per-sample gradients of its JVP model
        return "cannot run with a per-sample-gradient optimizer"
    if optimizer.startswith("dp_") and federation == "fedprox":
        return "computes its own per-sample gradients"
    return None


#: How long each kind of combination trains in the grid: long enough on digits to show it learned, short enough
#: for the default test run. Centralized: 3 epochs; federated: 6 rounds of 4 of 8 devices, 2 local epochs.
CENTRAL_TRAINING = ["trainer.max_epochs=3"]
FEDERATED_TRAINING = [
    "federation.rounds=6",
    "federation.partition.num_clients=8",
    "federation.selection.clients_per_round=4",
    "federation.client.local_epochs=2",
]
#: DP runs draw their Poisson batches and noise from the run seed (reproducible test numbers).
DP_TRAINING = ["optimizer.deterministic=true"]
#: The learning rates of the plain optimizers' defaults learn slowly in a few steps; these learn in the grid.
FAST_LR = {"adam": 0.01, "adamw": 0.01, "sgd": 0.2, "dp_adam": 0.01, "dp_sgd": 0.5}


def minimum_accuracy(method: str, optimizer: str, federation: str) -> float:
    """The test accuracy a combination must reach on digits (10 classes, chance 0.1), chosen per kind of
    combination from measured runs with a margin: every bound is far above chance, so a combination that
    runs but learns nothing fails."""
    private = optimizer.startswith("dp_")
    if federation == "none":
        return 0.6 if private else 0.85
    return 0.4 if private else 0.75


@pytest.mark.parametrize(("method", "optimizer", "federation"), COMBINATIONS)
def test_every_method_optimizer_federation_composes_and_learns(
    method: str, optimizer: str, federation: str, tmp_path: Path, old_run: Path
) -> None:
    overrides = [
        f"method={method}",
        f"optimizer={optimizer}",
        f"federation={federation}",
        "seed=0",
        f"optimizer.lr={FAST_LR[optimizer]}",
    ]
    overrides += method_overrides(method, old_run)
    overrides += CENTRAL_TRAINING if federation == "none" else FEDERATED_TRAINING
    if optimizer.startswith("dp_"):
        overrides += DP_TRAINING
    cfg = compose_train(overrides, tmp_path)
    reason = refusal(method, optimizer, federation)
    if reason is not None:
        with pytest.raises(ConfigError, match=reason):
            check_compatibility(cfg, plugin_classes(cfg), {"method": method, "data": "digits"})
        return
    results = run(cfg).results
    assert results["test/acc"] >= minimum_accuracy(method, optimizer, federation), results
    if federation != "none":  # every round trained and was averaged in
        assert results["federation/aggregated_rounds"] == 6.0, results


SEARCH_PLUGINS = {
    "digits_optuna": "hydra_plugins.hydra_optuna_sweeper",
    "joblib": "hydra_plugins.hydra_joblib_launcher",
}
HPARAMS = sorted(e.name[:-5] for e in (files("trustml.conf") / "hparams_search").iterdir() if e.name.endswith(".yaml"))


@pytest.mark.parametrize("search", HPARAMS)
def test_hparams_search_configs_compose(search: str, tmp_path: Path) -> None:
    plugin = SEARCH_PLUGINS[search]
    if importlib.util.find_spec(plugin) is None:
        pytest.skip(f"needs the optional Hydra plugin {plugin} (pip install -e '.[sweepers]')")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="trustml.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"


def test_data_synthetic_trains_on_a_trustml_synth_data_set(tmp_path: Path) -> None:
    from trustml.synth.annotation import parse_annotated
    from trustml.synth.formats import write_jsonl

    golden = [("play [pop](genre) music", "PlayMusic"), ("weather in [Paris](city)", "GetWeather")]
    utterances = [parse_annotated(text, intent) for text, intent in golden for _ in range(15)]
    path = write_jsonl(utterances, tmp_path / "dataset.jsonl")
    cfg = compose_train(["data=synthetic", f"data.path={path}", "model=hf_tiny", "debug=fast_dev_run"], tmp_path / "r")
    outcome = run(cfg)
    assert outcome.model_spec["label_names"] == ["GetWeather", "PlayMusic"]
