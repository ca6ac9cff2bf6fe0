"""Shared tiny inputs for the synth tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustml.synth.annotation import Utterance, parse_annotated

SNIPS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "snips"

TOY = {
    "PlayMusic": [
        "play some [pop](genre) music",
        "play more [rock](genre) music",
        "play [jazz](genre) music",
        "play some [jazz](genre) music by [Miles Davis](artist)",
        "i want to hear [pop](genre) music",
        "i want to hear some [rock](genre) music by [Madonna](artist)",
        "put on [Madonna](artist)",
        "put on some [jazz](genre) music",
    ],
    "GetWeather": [
        "what is the weather in [Paris](city)",
        "what is the weather in [Berlin](city) [tomorrow](timeRange)",
        "will it rain in [Paris](city) [today](timeRange)",
        "will it rain [tomorrow](timeRange)",
        "weather in [Rome](city)",
    ],
}


def toy_utterances() -> list[Utterance]:
    """The :data:`TOY` golden utterances, parsed."""
    return [parse_annotated(text, intent) for intent, texts in TOY.items() for text in texts]


@pytest.fixture
def toy() -> list[Utterance]:
    return toy_utterances()


@pytest.fixture
def toy_yaml(tmp_path: Path) -> Path:
    lines = []
    for intent, texts in TOY.items():
        lines.append(f"{intent}:")
        lines += [f"  - {t}" for t in texts]
    path = tmp_path / "golden.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def needs_snips() -> pytest.MarkDecorator:
    """Skip unless the SNIPS data set is at ``../shared/data/snips``."""
    return pytest.mark.skipif(not SNIPS_DIR.is_dir(), reason=f"SNIPS data not found at {SNIPS_DIR}")
