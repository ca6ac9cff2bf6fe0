"""``trustml-generate swap.donor=...``: generate with another model's decoder self-attention, scored like the knobs."""

from __future__ import annotations

import pytest

import trustml.methods.attention_swap  # noqa: F401 - registers method=attention_swap
from tests.conftest import compose_train
from tests.knobs.conftest import TINY_BART
from tests.knobs.test_generate_cli import compose_generate
from trustml.cli.generate import generate
from trustml.errors import ConfigError
from trustml.run_record import RunRecord
from trustml.runner import run


def _train(run_dir, data_dir, seed: int, *extra: str):
    overrides = [
        "data=topical_chat_grounded",
        "model=hf_seq2seq",
        "method=attention_swap",
        f"data.data_dir={data_dir}",
        f"model.random_init_config={TINY_BART}",
        "model.knowledge_tokens=24",
        "model.history_tokens=16",
        "trainer.max_epochs=3",
        "optimizer.lr=0.03",
        "logger=none",
        f"seed={seed}",
        *extra,
    ]
    outcome = run(compose_train(overrides, run_dir))
    record = RunRecord(run_dir)
    record.start(seed=seed, seed_source="config", overrides=overrides, source_dir=run_dir)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    return run_dir


@pytest.fixture(scope="module")
def runs(toy_topical_chat, tmp_path_factory):
    """A response model trained with its self-attention trainable, and a second one (another seed) as donor."""
    model = _train(tmp_path_factory.mktemp("model"), toy_topical_chat, 0, "method.freeze=[]")
    donor = _train(tmp_path_factory.mktemp("donor"), toy_topical_chat, 1, "method.freeze=[]")
    return model, donor


def _generate(tmp_path, data_dir, *overrides: str) -> dict[str, float]:
    base = [f"data.data_dir={data_dir}", "data.max_examples=6", "batch_size=3", "generation.max_new_tokens=6"]
    return generate(compose_generate([*base, *overrides]), tmp_path)


def test_swapping_in_its_own_self_attention_changes_nothing_and_others_change_the_output(
    runs, toy_topical_chat, tmp_path
):
    model, donor = runs
    own = _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}")
    same = _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}", f"swap.donor={model}")
    assert same == own
    other = _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}", f"swap.donor={donor}")
    random = _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}", "swap.donor=random")
    assert other["perplexity"] != pytest.approx(own["perplexity"], rel=1e-6)
    assert random["perplexity"] != pytest.approx(own["perplexity"], rel=1e-6)
    # the swap composes with the knobs
    knobbed = _generate(
        tmp_path, toy_topical_chat, f"model.run_dir={model}", "swap.donor=random", "generate/knobs=knowledge"
    )
    assert knobbed["perplexity"] != pytest.approx(random["perplexity"], rel=1e-6)


def test_bad_swap_options_are_named(runs, toy_topical_chat, tmp_path):
    model, _ = runs
    with pytest.raises(ConfigError, match="leave swap.donor unset"):
        _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}", "swap.donor=none")
    with pytest.raises(ConfigError, match=r"names donor layer\(s\) \[3\]"):
        _generate(tmp_path, toy_topical_chat, f"model.run_dir={model}", f"swap.donor={model}", "swap.layer_map=[3]")
