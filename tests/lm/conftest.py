"""Shared fixtures of the language-model tests: a small gendered corpus, tiny GPT-2 configs, in-process runs."""

from __future__ import annotations

import json
import logging
import random
import signal
from pathlib import Path

import pytest

from trustml.cli.main import APP as TRAIN_APP
from trustml.cli.task import TaskApp, run_app

#: A 2-layer, 32-wide GPT-2 with random weights (vocabulary and special ids come from the tokenizer).
TINY_GPT2 = "{model_type:gpt2,n_embd:32,n_layer:2,n_head:2,n_positions:64}"
#: A smaller student.
TINY_GPT2_STUDENT = "{model_type:gpt2,n_embd:16,n_layer:1,n_head:2,n_positions:64}"
VOCAB = 200

PROFESSIONS = ["nurse", "engineer", "teacher", "doctor", "pilot", "dancer", "baker", "farmer"]
MALE = ["he", "his", "father", "brother", "man"]
FEMALE = ["she", "her", "mother", "sister", "woman"]


def write_corpus(path: Path, n_docs: int = 48, per_doc: int = 10, seed: int = 0) -> Path:
    """A JSONL corpus of short templated sentences about professions with gendered words, grouped by ``doc``.

    Nurses and dancers are written about as women, engineers and pilots as men (a bias to learn), the others mixed.
    """
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for doc in range(n_docs):
            for _ in range(per_doc):
                job = rng.choice(PROFESSIONS)
                female = {"nurse": True, "dancer": True, "engineer": False, "pilot": False}.get(job, rng.random() < 0.5)
                words = FEMALE if female else MALE
                text = f"The {job} said that {words[0]} likes {words[1]} work and {words[1]} {words[2]} ."
                if rng.random() < 0.5:
                    text = f"The {job} is a {words[4]} and {words[0]} is kind ."
                f.write(json.dumps({"text": text, "doc": f"doc{doc}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("lm_corpus") / "corpus.jsonl")


def lm_overrides(corpus: Path, *extra: str, student: bool = False) -> list[str]:
    """Overrides of a small, fast ``model=hf_causal_lm data=text_lm`` run with a trained 200-token vocabulary."""
    return [
        "model=hf_causal_lm",
        "data=text_lm",
        f"data.paths=[{corpus}]",
        "data.group_field=doc",
        "data.batch_size=32",
        f"+model.random_init_config={TINY_GPT2_STUDENT if student else TINY_GPT2}",
        f"model.tokenizer_train_vocab_size={VOCAB}",
        "model.max_length=32",
        "optimizer.lr=0.01",
        "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=min",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "print_results=false",
        *extra,
    ]


def run_app_in_process(
    run_dir: Path, overrides: list[str], app: TaskApp = TRAIN_APP, argv_prefix: tuple[str, ...] = ()
) -> int:
    """Run a trustml app in-process into ``run_dir`` as its command line would; returns the exit code. Signal
    handlers and logging handlers are restored afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    root_state = (list(root.handlers), root.level)
    code = 0
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(run_dir.parent)
            mp.setenv("TRUSTML_LOG_DIR", str(run_dir.parent / "logs"))
            mp.setenv("HF_HUB_OFFLINE", "1")
            run_app(app, [*argv_prefix, f"hydra.run.dir={run_dir}", *overrides])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for handler in root.handlers:
            if handler not in root_state[0]:
                handler.close()
        root.handlers[:] = root_state[0]
        root.setLevel(root_state[1])
    return code


@pytest.fixture(scope="session")
def teacher_run(corpus, tmp_path_factory) -> Path:
    """A completed ``method=lm`` run of the tiny GPT-2 (trained 200-token vocabulary) on the corpus: the teacher."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    code = run_app_in_process(run_dir, lm_overrides(corpus, "method=lm", "trainer.max_epochs=4", "seed=0"))
    assert code == 0, (run_dir / "run.json").read_text() if (run_dir / "run.json").exists() else "no record"
    return run_dir


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())
