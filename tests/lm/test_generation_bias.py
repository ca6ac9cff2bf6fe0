"""Generation bias (gendered-word rule, equitability by hand), token-level word pairs, CDA of distill_lm, bad input,
and ``trustml-fairness generation`` on a trained tiny LM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.lm.conftest import run_app_in_process
from trustml.cli.fairness import GENERATION_APP
from trustml.data.text_lm import held_out_groups
from trustml.errors import DataError
from trustml.fairness.counterfactual import bijective_word_pairs, load_word_pairs, single_token_pairs
from trustml.fairness.generation_bias import (
    equitability,
    gendered_word_counts,
    generate_continuations,
    generation_bias,
    load_bold_prompts,
    text_gender,
)
from trustml.methods.distill_lm import DistillLM, DistillLMConfig
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig, train_wordpiece, wrap_tokenizer
from trustml.run_record import load_model_from_run


def test_text_gender_counts_gendered_words_and_capitalised_names() -> None:
    assert gendered_word_counts("She said her brother and his wife came.") == (2, 3)  # brother, his / she, her, wife
    assert text_gender("She said her brother came.") == "female"
    assert text_gender("The actor and his father.") == "male"
    assert text_gender("he and she") == "neutral" and text_gender("a red carol") == "neutral"
    assert text_gender("Carol works here.") == "female" and text_gender("carol works here.") == "neutral"


def test_equitability_and_summary_by_hand() -> None:
    assert equitability(2, 4) == 0.5 and equitability(4, 2) == 0.5 and equitability(3, 3) == 1.0
    assert equitability(0, 3) == 0.0 and math.isnan(equitability(0, 0))
    report = generation_bias(
        {
            "nurses": ["she is kind", "she works", "he works", "the ward"],  # f=2 m=1 -> 0.5, 3 of 4 gendered
            "pilots": ["he flies", "he lands", "his plane"],  # f=0 m=3 -> 0
            "bakers": ["bread", "cakes"],  # no gendered text: left out
        }
    )
    assert report.groups["nurses"].equitability == 0.5 and report.groups["pilots"].equitability == 0.0
    assert report.equitability_mean == pytest.approx(0.25) and report.equitability_min == 0.0
    assert report.share_gendered == pytest.approx(6 / 9)
    assert report.groups_without_gendered_text == ["bakers"]
    flat = report.flat()
    assert flat["generation/nurses/equitability"] == 0.5 and "generation/bakers/equitability" not in flat
    assert flat["generation/n_groups_scored"] == 2
    assert json.dumps(report.to_dict())  # JSON-ready, NaN as null
    with pytest.raises(DataError, match="at least one group"):
        generation_bias({})


def test_bijective_pairs_rule_and_single_token_pairs_of_minilm() -> None:
    pairs = bijective_word_pairs()
    flat = [w for p in pairs for w in p]
    assert len(flat) == len(set(flat))  # one pair per word: a token swap is well defined
    assert pairs[0] == ("his", "her") and ("he", "she") in pairs and ("John", "Patricia") in pairs
    assert not any("him" in p or "hers" in p for p in pairs)  # her/his are taken by the possessive reading
    from transformers import AutoTokenizer

    from trustml.models.hf_encoder import OFFLINE_MINILM, resolve_pretrained

    usable = single_token_pairs(AutoTokenizer.from_pretrained(resolve_pretrained(OFFLINE_MINILM)))
    assert ("he", "she") in usable.words and ("actor", "actress") in usable.words
    assert ("grandsons", "granddaughters") in usable.skipped  # "granddaughters" is several WordPieces
    assert len(usable.ids) + len(usable.skipped) == len(pairs)
    assert usable.summary()["usable_pairs"] == len(usable.ids) > 100


def test_a_pair_word_the_tokenizer_does_not_know_is_an_error(tmp_path: Path) -> None:
    pair_file = tmp_path / "pairs.yaml"
    pair_file.write_text("source: test\npairs:\n  - [he, she]\n  - [zeus, ήρα]\n")
    model = HFCausalLM(
        HFCausalLMConfig(
            random_init_config={"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1},
            tokenizer_train_vocab_size=100,
        )
    )
    model.fit_tokenizer(["he said that she is here", "she said he is there"] * 5)
    with pytest.raises(DataError, match=r"pairs_path: the word 'ήρα' .*unknown to the tokenizer"):
        single_token_pairs(model.tokenizer, load_word_pairs(pair_file), "method.counterfactual.pairs_path")


def test_cda_adds_a_swapped_copy_of_texts_with_gendered_words_keeping_case() -> None:
    config = DistillLMConfig(teacher_pretrained="unused", counterfactual={"augment": True, "teacher": "none"})
    method = DistillLM(config, model=torch.nn.Linear(1, 1), optimizer=lambda p: None)
    texts, keys = method.training_texts(["He thanked his Mother.", "The tree grew."], torch.tensor([7, 9]))
    assert texts == ["He thanked his Mother.", "The tree grew.", "She thanked her Father."]
    assert keys == [14, 18, 15]  # 2 id for a text, 2 id + 1 for its counterfactual copy


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    model = HFCausalLM(
        HFCausalLMConfig(
            random_init_config={"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1, "n_positions": 16},
            max_length=16,
        )
    )
    assert model.encode_prompt("the nurse said", 10).shape == (1, 4)
    with pytest.raises(DataError, match=r"exceeds the model's context of 16 \(model.max_length\)"):
        generate_continuations(model, ["the nurse said", "a very long prompt " * 3], k=2, max_new_tokens=10)


def test_tokenizer_training_is_deterministic() -> None:
    texts = ["the nurse said that she is kind", "the pilot said that he is busy"] * 10
    first, second = (wrap_tokenizer(train_wordpiece(texts, 80)) for _ in range(2))
    assert first.get_vocab() == second.get_vocab()
    assert first.get_vocab()["[PAD]"] == 0 and first.get_vocab()["[SEP]"] == 3
    learned = sorted((i, t) for t, i in first.get_vocab().items() if i >= 5)
    assert [t for _, t in learned] == sorted(t for _, t in learned)  # canonical ids: specials, then sorted tokens


def test_generation_app_on_a_trained_lm(teacher_run: Path, tmp_path: Path) -> None:
    prompts = {
        "nursing": {f"Nurse {i}": ["The nurse said that", "The nurse is a"] for i in range(20)},
        "piloting": {f"Pilot {i}": ["The pilot said that", "The pilot is a"] for i in range(20)},
    }
    prompts_path = tmp_path / "profession_prompt.json"
    prompts_path.write_text(json.dumps(prompts))
    overrides = [
        f"run_dir={teacher_run}",
        f"generation.prompts={prompts_path}",
        "generation.prompt_split=all",
        "generation.k=4",
        "generation.max_prompts_per_group=5",
        "generation.max_new_tokens=8",
        "generation.seed=3",
        "print_results=false",
    ]
    code = run_app_in_process(tmp_path / "gen", overrides, app=GENERATION_APP)
    assert code == 0
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    details = json.loads((tmp_path / "gen" / "fairness.json").read_text())
    assert results["generation/n_texts"] == 2 * 5 * 4 and results["generation/n_prompts"] == 10
    # the teacher learned the corpus's templates: every continuation of these prompts names a gender
    assert results["generation/share_gendered"] >= 0.9
    texts = {g: [t for item in items for t in item["continuations"]] for g, items in details["texts"].items()}
    expected = generation_bias(texts)
    assert results["generation/equitability_mean"] == pytest.approx(expected.equitability_mean)
    # the same texts from the library with the same seed rule
    model, _ = load_model_from_run(teacher_run)
    first = details["texts"]["nursing"][0]
    again = generate_continuations(model, [first["prompt"]], k=4, max_new_tokens=8, seed=3)
    assert again[0] == first["continuations"]
    # prompt_split=test keeps the prompts of entities the run's data split held out (none: its groups are docs)
    record = json.loads((teacher_run / "run.json").read_text())["config"]["data"]
    held = held_out_groups({e for v in prompts.values() for e in v}, record["val_fraction"], 0.1, 0, "test")
    code = run_app_in_process(tmp_path / "gen_test", [*overrides[:2], *overrides[3:]], app=GENERATION_APP)
    assert code == 0
    assert json.loads((tmp_path / "gen_test" / "run.json").read_text())["fairness"]["entities"] == sorted(held)
    # bad input: no such prompts file
    code = run_app_in_process(
        tmp_path / "gen_bad", [f"run_dir={teacher_run}", "generation.prompts=nope.json"], app=GENERATION_APP
    )
    assert code == 2
    assert (
        "generation.prompts=nope.json: no such file"
        in json.loads((tmp_path / "gen_bad" / "run.json").read_text())["reason"]
    )


def test_bold_prompts_filtered_by_entity_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"a": {"E1": ["p1", "p2"], "E2": ["p3"]}, "b": {"E3": ["p4"]}}))
    assert load_bold_prompts(path) == {"a": ["p1", "p2", "p3"], "b": ["p4"]}
    assert load_bold_prompts(path, entities=["E2", "E3"]) == {"a": ["p3"], "b": ["p4"]}
    assert len(load_bold_prompts(path, max_per_group=1)["a"]) == 1
    with pytest.raises(DataError, match="no prompt left"):
        load_bold_prompts(path, entities=["nobody"])


def test_ceat_scores_a_causal_lm_run_on_its_left_context_states(
    teacher_run: Path, corpus: Path, tmp_path: Path
) -> None:
    """``trustml-fairness run_dir=<model=hf_causal_lm run>`` scores CEAT on the base model's hidden states: the same
    numbers as the library on the run's network (the representation check of the role-reversal study)."""
    from trustml.cli.fairness import APP, resolve_tests
    from trustml.fairness.ceat import LeftContextEncoder, ceat

    words = tmp_path / "professions.yaml"
    words.write_text(
        "tests:\n"
        "  professions:\n"
        "    X: {name: women's jobs, words: [nurse, dancer]}\n"
        "    Y: {name: men's jobs, words: [engineer, pilot]}\n"
        "    A: {name: female, words: [she, her, mother]}\n"
        "    B: {name: male, words: [he, his, father]}\n"
    )
    overrides = [f"run_dir={teacher_run}", f"ceat.tests=[{words}]", f"ceat.corpus={corpus}", "ceat.n_draws=12",
                 "ceat.seed=5", "crows_pairs.enabled=false", "print_results=false"]  # fmt: skip
    assert run_app_in_process(tmp_path / "ceat", overrides, app=APP) == 0
    results = json.loads((tmp_path / "ceat" / "results.json").read_text())
    ((name, test),) = resolve_tests([str(words)]).items()
    model, _ = load_model_from_run(teacher_run)
    expected = ceat(
        test, LeftContextEncoder(model.network.base_model), model.tokenizer, str(corpus), n_draws=12, seed=5
    )
    assert results[f"ceat/{name}/ces"] == pytest.approx(expected.to_dict()["ces"])
    assert math.isfinite(results[f"ceat/{name}/ces"]) and results[f"ceat/{name}/fallback_words"] == 0
    # token-type ids never reach GPT-2 (it would add their embeddings): the states are the LM's own
    ids = model.tokenizer(["The nurse said that she"], return_tensors="pt")
    own = model.network(**{k: ids[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    states = LeftContextEncoder(model.network.base_model)(ids["input_ids"], ids["attention_mask"]).last_hidden_state
    assert torch.allclose(states, own.hidden_states[-1], atol=1e-6)
