"""A tiny MASSIVE-format folder (old/ and updated/ stages of an intent update) and in-process runs on it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TINY_BERT, compose_train
from tests.pc.conftest import blobs, old_run  # noqa: F401 - fixtures (blob data, old MLP runs) shared with tests/pc
from trustml.runner import run

#: Intent -> the words that give it away (the tiny model learns the keyword).
INTENTS = {
    "alarm_set": ["alarm", "wake"],
    "weather_query": ["weather", "rain"],
    "play_music": ["music", "song"],
    "transport_taxi": ["taxi", "cab"],
}
FILLERS = ["please", "can you", "i want to", "now", "for me", "today", "the", "a", "quickly", "at seven"]

#: hf_encoder options of a tiny random BERT trained end to end on token ids.
TINY_ENCODER = [
    "model=hf_encoder",
    f"model.random_init_config={TINY_BERT}",
    "model.freeze_encoder=false",
    "model.cache_embeddings=false",
    "model.max_length=16",
    "model.dropout=0.0",
]
FAST = ["trainer.enable_progress_bar=false", "print_results=false", "optimizer=adam", "optimizer.lr=0.01"]


def utterance(rng: random.Random, intent: str) -> str:
    """A few filler words around one of the intent's keywords (lengths vary from 2 to 8 words)."""
    words = rng.sample(FILLERS, rng.randint(1, 6)) + [rng.choice(INTENTS[intent])]
    rng.shuffle(words)
    return " ".join(words)


def write_massive(root: Path, seed: int = 0) -> Path:
    """``root/{old,updated}/{train,dev,test}.jsonl`` like MASSIVE add-data: the old training split lacks the last
    intent, the updated one adds utterances (with it); both stages share the test split."""
    rng = random.Random(seed)
    names = list(INTENTS)
    next_id = iter(range(1000, 100000))

    def rows(count: int, intents: list[str]) -> list[dict]:
        return [
            {"id": str(next(next_id)), "label": names.index(i), "text": utterance(rng, i), "label_name": i}
            for i in intents
            for _ in range(count)
        ]

    old_train, added = rows(20, names[:-1]), rows(10, names)
    dev_old, dev_added, test = rows(4, names), rows(3, names), rows(10, names)
    stages = {
        "old": {"train": old_train, "dev": dev_old, "test": test},
        "updated": {"train": old_train + added, "dev": dev_old + dev_added, "test": test},
    }
    for stage, files in stages.items():
        (root / stage).mkdir(parents=True, exist_ok=True)
        for split, items in files.items():
            (root / stage / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


def train_run(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, dict]:
    """Compose and run a training config in this process; leave a completed run directory (run.json with the
    model spec, as the CLI writes it) and return it with the results."""
    run_dir = tmp_path / name
    cfg = compose_train(overrides, run_dir)
    outcome = run(cfg)
    (run_dir / "run.json").write_text(json.dumps({"status": "completed", "model_spec": outcome.model_spec}))
    return run_dir, outcome.results


@pytest.fixture
def massive_dir(tmp_path: Path) -> Path:
    return write_massive(tmp_path / "massive")


@pytest.fixture
def massive_run(tmp_path: Path, massive_dir: Path) -> Callable[..., tuple[Path, dict]]:
    """Factory: a run on the tiny MASSIVE folder with the tiny encoder (``name``, stage, extra overrides)."""

    def make(name: str, stage: str, *overrides: str, epochs: int = 8, seed: int = 0) -> tuple[Path, dict]:
        base = ["data=massive", f"data.path={massive_dir}", f"data.stage={stage}", "data.batch_size=16"]
        return train_run(
            tmp_path, name, [*base, *TINY_ENCODER, *FAST, f"trainer.max_epochs={epochs}", f"seed={seed}", *overrides]
        )

    return make
