"""Help that teaches: each plugin's options with types and defaults, whole sentences, and the task apps' own help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trustml.cli.help import help_text
from trustml.cli.plugin_help import plugin_help
from trustml.registry import PLUGIN_GROUPS, load_plugins, plugins


def test_plugin_help_lists_every_option_with_its_type_and_default() -> None:
    load_plugins()
    text = plugin_help("optimizer", "dp_sgd")
    config = plugins("optimizer")["dp_sgd"].config_class
    for f in dataclasses.fields(config):
        assert f"{f.name}" in text
    assert "target_epsilon           float | None = 8.0" in text
    assert "deterministic            bool = False" in text
    assert "example-level DP" in text  # the summary says which kind of DP this option gives
    assert "Options shared by the DP optimizers" in text  # the base dataclass's description is shown too


@pytest.mark.parametrize("group", PLUGIN_GROUPS)
def test_every_registered_plugin_has_option_help(group: str) -> None:
    load_plugins()
    for name in plugins(group):
        assert plugin_help(group, name).startswith(f"{group}={name}: ")


def test_summaries_are_whole_sentences_not_cut_at_a_line_break() -> None:
    load_plugins()
    text = help_text()
    # the synthetic data config's description spans two comment lines; both are shown
    line = next(line for line in text.splitlines() if line.strip().startswith("synthetic "))
    assert line.rstrip().endswith(")") or line.rstrip().endswith(".")
    for group in PLUGIN_GROUPS:
        for info in plugins(group).values():
            assert info.summary.count("(") == info.summary.count(")"), info.summary


def test_cli_help_of_one_plugin_and_of_an_unknown_one(tmp_path: Path) -> None:
    shown = run_cli("--help", "federation=fedavg", cwd=tmp_path)
    assert shown.returncode == 0 and "privacy.target_epsilon" in shown.stdout and "float | None = None" in shown.stdout
    unknown = run_cli("--help", "method=nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "method options: " in unknown.stdout and "pc" in unknown.stdout


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("trustml-generate", ["knowledge-grounded responses", "cross_attention", "mixing_weight", "max_new_tokens"]),
        ("trustml-synth", ["golden utterances", "SNIPS format", "Rasa NLU YAML", "budget_per_intent", "encoding"]),
    ],
)
def test_task_apps_describe_their_own_options_and_inputs(tool: str, expected: list[str], tmp_path: Path) -> None:
    out = run_cli("--help", cwd=tmp_path, tool=tool)
    assert out.returncode == 0, out.stderr
    assert "powered by Hydra" not in out.stdout
    for phrase in expected:
        assert phrase in out.stdout, phrase
