"""``trustml model=hf_causal_lm data=text_lm method=lm|distill_lm`` end to end, in-process, on a tiny GPT-2.

The corpus is templated (low entropy): a model that learned predicts it far better than the uniform distribution
over its vocabulary (perplexity ``V``), which is what the perplexity bounds check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lm.conftest import VOCAB, lm_overrides, read_results, run_app_in_process
from trustml.fairness.counterfactual import single_token_pairs
from trustml.models.hf_causal_lm import HFCausalLM
from trustml.run_record import load_model_from_run


def test_lm_learns_and_its_trained_tokenizer_travels_with_the_checkpoint(teacher_run: Path) -> None:
    results = read_results(teacher_run)
    # uniform over the 200 outputs is perplexity 200; the templated corpus is learned to well below 10
    assert results["test/perplexity"] < VOCAB / 20, results
    assert results["test/perplexity"] == pytest.approx(2.718281828 ** results["test/loss"], rel=0.05)
    metrics = (teacher_run / "metrics.csv").read_text().splitlines()
    first, last = (dict(zip(metrics[0].split(","), row.split(","), strict=True)) for row in (metrics[1], metrics[-1]))
    assert float(last["val/perplexity"]) < float(first["val/perplexity"])
    model, _ = load_model_from_run(teacher_run)  # rebuilt from its config: the vocabulary comes from the checkpoint
    assert isinstance(model, HFCausalLM) and not model.needs_tokenizer
    assert 50 < len(model.vocabulary) <= VOCAB and model.vocabulary["she"] != model.vocabulary["he"]
    assert model.encode(["the nurse said that she"])["input_ids"].tolist()[0][1:-1] == [
        model.vocabulary[w] for w in ("the", "nurse", "said", "that", "she")
    ]


def test_distill_lm_with_cda_and_role_reversal_learns(teacher_run: Path, corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "student"
    overrides = lm_overrides(
        corpus,
        "method=distill_lm",
        f"method.teacher_run_dir={teacher_run}",
        "method.counterfactual.augment=true",
        "method.counterfactual.teacher=mean",
        "method.teacher_top_k=16",
        "trainer.max_epochs=3",
        "seed=1",
        student=True,
    )
    assert run_app_in_process(run_dir, overrides) == 0
    results = read_results(run_dir)
    assert results["test/perplexity"] < VOCAB / 10, results
    metrics = (run_dir / "metrics.csv").read_text()
    assert "distill/usable_pairs" in metrics and "distill/cached_texts" in metrics
    header, *rows = metrics.splitlines()
    last = dict(zip(header.split(","), rows[-1].split(","), strict=True))
    student, _ = load_model_from_run(run_dir)
    teacher, _ = load_model_from_run(teacher_run)
    assert student.vocabulary == teacher.vocabulary  # the student adopted the teacher's trained vocabulary
    usable = single_token_pairs(student.tokenizer)
    assert float(last["distill/usable_pairs"]) == len(usable.ids) >= 3
    assert {("he", "she"), ("his", "her"), ("man", "woman")} <= set(usable.words)
    # every corpus text has a gendered word: the cache holds each training text and its counterfactual copy
    n_texts = len(corpus.read_text().splitlines())  # about 80% of them are in the training split
    assert 2 * 0.6 * n_texts < float(last["distill/cached_texts"]) < 2 * 0.95 * n_texts


def test_a_teacher_with_another_vocabulary_is_refused(teacher_run: Path, corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "student"
    overrides = [
        o
        for o in lm_overrides(corpus, "method=distill_lm", f"method.teacher_run_dir={teacher_run}", student=True)
        if not o.startswith("model.tokenizer_train_vocab_size")
    ]  # the student reads text with MiniLM's 30,522-token WordPiece vocabulary
    assert run_app_in_process(run_dir, [*overrides, "trainer.max_epochs=1"]) == 2
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert "method.teacher_run_dir" in record["reason"] and "differs from the student's" in record["reason"]
    assert "model.tokenizer" in record["reason"]


def test_lm_refuses_a_classification_model(corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "bad"
    code = run_app_in_process(run_dir, ["model=mlp", "data=text_lm", f"data.paths=[{corpus}]", "method=lm"])
    assert code == 2
    assert "lm_text" in json.loads((run_dir / "run.json").read_text())["reason"]


def test_a_hugging_face_teacher_path_with_the_same_tokenizer(corpus: Path, tmp_path: Path) -> None:
    """``method.teacher_pretrained``: a causal LM saved with ``save_pretrained`` (here: random weights and MiniLM's
    tokenizer); the student reads text with that tokenizer (``model.tokenizer``) and distils from it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(OFFLINE_MINILM))
    config = AutoConfig.for_model(
        model_type="gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=64, vocab_size=len(tokenizer)
    )
    teacher_path = tmp_path / "hf_teacher"
    AutoModelForCausalLM.from_config(config).save_pretrained(teacher_path)
    tokenizer.save_pretrained(teacher_path)
    overrides = [
        o
        for o in lm_overrides(corpus, "method=distill_lm", f"method.teacher_pretrained={teacher_path}", student=True)
        if not o.startswith("model.tokenizer_train_vocab_size")
    ]
    run_dir = tmp_path / "student"
    small = ["data.max_train_texts=64", "data.max_eval_texts=32", "trainer.max_epochs=1"]
    code = run_app_in_process(run_dir, [*overrides, f"model.tokenizer={teacher_path}", *small])
    assert code == 0
    results = read_results(run_dir)
    assert 1.0 < results["test/perplexity"] < len(tokenizer)  # trained towards a random teacher: only finite
