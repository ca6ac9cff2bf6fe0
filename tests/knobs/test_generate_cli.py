"""``trustml-generate``: knobs from the command line, JSONL outputs and metrics, sweeps, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import REPO_ROOT, compose_train
from tests.knobs.conftest import TINY_BART
from trustml.cli.generate import GenerateSchema, generate
from trustml.config_schema import register_config_support
from trustml.errors import TrustMLError
from trustml.run_record import RunRecord
from trustml.runner import run

METRICS = {"knowledge_f1", "reference_f1", "question_ratio", "distinct_1", "distinct_2", "length", "perplexity"}


@pytest.fixture(scope="module")
def trained_run(toy_topical_chat, tmp_path_factory):
    """A completed ``method=seq2seq`` run (tiny BART, two epochs on the toy Topical-Chat) with its run record."""
    import trustml.data.topical_chat_grounded  # noqa: F401 - registers the seq2seq plugins
    import trustml.methods.seq2seq  # noqa: F401

    run_dir = tmp_path_factory.mktemp("seq2seq_run")
    overrides = [
        "data=topical_chat_grounded",
        "model=hf_seq2seq",
        "method=seq2seq",
        f"data.data_dir={toy_topical_chat}",
        f"model.random_init_config={TINY_BART}",
        "model.knowledge_tokens=24",
        "model.history_tokens=16",
        "trainer.max_epochs=2",
        "optimizer.lr=0.03",
        "logger=none",
    ]
    outcome = run(compose_train(overrides, run_dir))
    record = RunRecord(run_dir)
    record.start(seed=0, seed_source="config", overrides=overrides, source_dir=run_dir)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    return run_dir


def compose_generate(overrides: list[str]):
    register_config_support()
    ConfigStore.instance().store(name="generate_schema", node=GenerateSchema, provider="trustml")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="trustml.conf", version_base="1.3"):
        return compose("generate", overrides=overrides)


def _generate(tmp_path, data_dir, *overrides: str) -> dict[str, float]:
    base = [f"data.data_dir={data_dir}", "data.max_examples=6", "batch_size=4", "generation.max_new_tokens=6"]
    return generate(compose_generate([*base, *overrides]), tmp_path)


def test_generations_and_metrics_under_knobs(trained_run, toy_topical_chat, tmp_path):
    neutral = _generate(tmp_path, toy_topical_chat, f"model.run_dir={trained_run}")
    assert METRICS <= set(neutral) and neutral["examples"] == 6
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"knowledge", "history", "reference", "response"} <= set(rows[0])
    assert rows[0]["knowledge"].startswith("football")
    biased = _generate(tmp_path, toy_topical_chat, f"model.run_dir={trained_run}", "generate/knobs=knowledge")
    assert biased["perplexity"] != pytest.approx(neutral["perplexity"], rel=1e-6)
    strong = _generate(tmp_path, toy_topical_chat, f"model.run_dir={trained_run}", "generate/knobs=self_attention")
    assert strong["perplexity"] != pytest.approx(neutral["perplexity"], rel=1e-6)


def test_decoder_mixing_and_context_augmentation(trained_run, toy_topical_chat, tmp_path):
    model = [f"model.run_dir={trained_run}", f"secondary.random_init_config={TINY_BART}"]
    mixed = _generate(tmp_path, toy_topical_chat, *model, "generate/knobs=mixing", "generation.num_beams=2")
    questions = _generate(tmp_path, toy_topical_chat, f"model.run_dir={trained_run}", "generate/knobs=questions")
    for metrics in (mixed, questions):
        assert METRICS <= set(metrics) and 0 < metrics["perplexity"] < float("inf")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "no model given: set model.run_dir"),
        (["generate/knobs=mixing", f"model.random_init_config={TINY_BART}"], "needs a secondary model"),
        (["knobs.mixing_space=geometric", f"model.random_init_config={TINY_BART}"], "mixing_space='geometric'"),
        (["model.run_dir=/nonexistent/run"], "is not a trustml run directory"),
    ],
)
def test_bad_input_is_refused_with_the_fix(toy_topical_chat, tmp_path, overrides, message):
    with pytest.raises(TrustMLError, match=message):
        _generate(tmp_path, toy_topical_chat, *overrides)


def test_sweep_over_knob_values_from_the_command_line(trained_run, toy_topical_chat, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TRUSTML_LOG_DIR": str(tmp_path / "logs")}
    args = [
        "-m",
        f"model.run_dir={trained_run}",
        f"data.data_dir={toy_topical_chat}",
        "data.max_examples=4",
        "generation.max_new_tokens=4",
        "knobs.cross_attention.values.knowledge=1,5",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "trustml.cli.generate", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((tmp_path / "logs" / "multiruns").glob("*/*/results.json"))
    assert len(jobs) == 2
    results = [json.loads(job.read_text()) for job in jobs]
    assert all(METRICS <= set(r) for r in results)
    assert results[0]["perplexity"] != results[1]["perplexity"]
    assert all(len((job.parent / "generations.jsonl").read_text().splitlines()) == 4 for job in jobs)
    assert all(json.loads((job.parent / "run.json").read_text())["status"] == "completed" for job in jobs)


def test_method_knob_generator_reproduces_trustml_generate(trained_run, toy_topical_chat, tmp_path):
    """The same trained model, turns, batches and knob through the runner (``method=knob_generator``) give the same
    metrics as ``trustml-generate``."""
    import trustml.methods.knob_generator  # noqa: F401 - registers the method

    knob = "knobs.cross_attention.values.knowledge=5"
    (tmp_path / "generate").mkdir()
    generated = _generate(tmp_path / "generate", toy_topical_chat, f"model.run_dir={trained_run}", knob)
    overrides = [
        "method=knob_generator",
        "data=topical_chat_grounded",
        "model=hf_seq2seq",
        f"data.data_dir={toy_topical_chat}",
        "data.max_eval_examples=6",
        "data.eval_batch_size=4",
        f"model.random_init_config={TINY_BART}",
        f"method.model_run_dir={trained_run}",
        "method.generation.max_new_tokens=6",
        f"+method.{knob}",
        "trainer.max_epochs=0",
        "logger=none",
    ]
    results = run(compose_train(overrides, tmp_path / "method")).results
    for name in ("knowledge_f1", "reference_f1", "question_ratio", "distinct_1", "distinct_2", "length"):
        assert results[f"test/{name}"] == pytest.approx(generated[name], abs=1e-6), name
    assert results["test/reference_perplexity"] == pytest.approx(generated["perplexity"], rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "method" / "generations.jsonl").read_text().splitlines()]
    responses = [json.loads(line)["response"] for line in (tmp_path / "generate" / "generations.jsonl").open()]
    assert [r["output"] for r in rows] == responses


def test_a_model_loaded_from_a_run_trains_in_train_mode(trained_run):
    """``method.model_run_dir`` loads the run's model in eval mode; the method puts it back in train mode (dropout
    on) for fine-tuning, while generation runs in eval mode through Lightning's test loop."""
    from trustml.methods.knob_generator import KnobGeneratorConfig, KnobGeneratorMethod
    from trustml.run_record import load_model_from_run

    placeholder, _ = load_model_from_run(str(trained_run), "last")
    assert not placeholder.training
    method = KnobGeneratorMethod(KnobGeneratorConfig(model_run_dir=str(trained_run)), model=placeholder, optimizer=None)
    assert all(module.training for module in method.model.modules())
