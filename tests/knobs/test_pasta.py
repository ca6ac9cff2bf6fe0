"""PASTA head selection for knob A on decoder-only models: the per-(layer, head) mask steers only its heads,
profiling is deterministic and finds the one head whose steering matters, the method profiles before generating and
records the heads, and bad options are refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.knobs.test_knob_generator import CAUSAL_FLAG, _compose, causal_lm, instruction, run_method
from trustml.errors import ConfigError
from trustml.knobs.causal_knobs import PromptAttentionBias, PromptAttentionBiasing
from trustml.knobs.generator import CausalKnobGenerator, KnobSettings
from trustml.knobs.pasta import profile_heads
from trustml.methods.knob_generator import GenerationsFile
from trustml.runner import run

GREEDY = {"max_new_tokens": 5, "pad_token_id": 0, "eos_token_id": None}


def prompts(model, count: int = 6):
    """The instruction sample's first ``count`` prompts (input_ids, attention_mask, segment_ids), its examples and
    the builder (vocabulary), as ``method=knob_generator`` builds them."""
    data = instruction(batch=count)
    method, _ = run_method(model, data, compare_neutral=False, score_reference=False, generation={"max_new_tokens": 1})
    examples = data.splits["test"].inputs[:count]
    return method._builder([e.segments for e in examples]), examples, method


def last_query_attention(model, inputs, rule: PromptAttentionBias | None, vocabulary) -> torch.Tensor:
    """Attention weights ``[layers, B, H, K]`` of the last prompt position (tau = 0, the first generating query)."""
    with PromptAttentionBiasing(model, prompt=rule, segment_ids=inputs["segment_ids"], vocabulary=vocabulary):
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_attentions=True)
    return torch.stack([a[:, :, -1, :] for a in out.attentions])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_layer_head_mask_steers_only_its_heads(arch):
    model = causal_lm(arch, "eager")
    inputs, _, method = prompts(model)
    vocabulary = method._builder.vocabulary
    network = model.network
    neutral = last_query_attention(network, inputs, None, vocabulary)
    span = inputs["segment_ids"] == vocabulary.id_of("instruction")
    for layer, head in ([1, 0], [0, 1]):
        rule = PromptAttentionBias({"instruction": 20.0}, layer_heads=[[layer, head]])
        steered = last_query_attention(network, inputs, rule, vocabulary)
        # the chosen head: a' = a * b / sum(a * b) with b = 20 on the instruction span (its inputs are unchanged)
        reweighted = neutral[layer, :, head] * torch.where(span, 20.0, 1.0)
        expected = reweighted / reweighted.sum(-1, keepdim=True)
        torch.testing.assert_close(steered[layer, :, head], expected, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(steered[layer, :, head], neutral[layer, :, head], atol=1e-3)
        for other in range(network.config.num_attention_heads):
            if other != head:  # same layer, other heads; and every head of the layers below: unchanged
                torch.testing.assert_close(steered[layer, :, other], neutral[layer, :, other], rtol=0, atol=1e-6)
        torch.testing.assert_close(steered[:layer], neutral[:layer], rtol=0, atol=1e-6)


def test_pairs_covering_a_layer_equal_the_layers_option():
    model = causal_lm("gpt2")
    inputs, examples, method = prompts(model)
    vocabulary = method._builder.vocabulary
    targets = method._causal_targets([e.target for e in examples])

    def run_with(rule: PromptAttentionBias) -> tuple[torch.Tensor, torch.Tensor]:
        generator = CausalKnobGenerator(model.network, model.tokenizer, KnobSettings(prompt_attention=rule), vocabulary)
        return generator.generate(**inputs, **GREEDY), generator.reference_token_nll(targets=targets, **inputs)

    pairs = run_with(PromptAttentionBias({"instruction": 20.0}, layer_heads=[[1, 0], [1, 1]]))
    layer = run_with(PromptAttentionBias({"instruction": 20.0}, layers=[1]))
    one_head = run_with(PromptAttentionBias({"instruction": 20.0}, layer_heads=[[1, 0]]))
    assert torch.equal(pairs[0], layer[0]) and torch.equal(pairs[1], layer[1])
    assert not torch.equal(pairs[1], one_head[1]), "steering one head of the layer must differ from steering both"


def one_live_head_gpt2(live: tuple[int, int]):
    """Tiny GPT-2 whose attention output projections read only head ``live``: steering any other head changes
    nothing downstream, so PASTA profiling must single ``live`` out."""
    model = causal_lm("gpt2")
    config = model.network.config
    size = config.n_embd // config.n_head
    with torch.no_grad():
        for layer, block in enumerate(model.network.transformer.h):
            for head in range(config.n_head):
                if (layer, head) != live:
                    block.attn.c_proj.weight[head * size : (head + 1) * size] = 0.0  # Conv1D: [in, out]
    return model


def test_profiling_is_deterministic_and_picks_the_only_head_that_matters():
    live = (1, 0)
    model = one_live_head_gpt2(live)
    inputs, _, method = prompts(model)
    vocabulary = method._builder.vocabulary
    rule = PromptAttentionBias({"instruction": 20.0}, head_selection="profiled", top_k=1)
    # references: the continuations the model writes with the live head steered (what steering that head favours)
    steer_live = KnobSettings(prompt_attention=PromptAttentionBias({"instruction": 20.0}, layer_heads=[list(live)]))
    generator = CausalKnobGenerator(model.network, model.tokenizer, steer_live, vocabulary)
    targets = generator.generate(**inputs, **GREEDY)
    batches = [{**{k: v[:3] for k, v in inputs.items()}, "targets": targets[:3]},
               {**{k: v[3:] for k, v in inputs.items()}, "targets": targets[3:]}]  # fmt: skip
    first = profile_heads(model.network, model.tokenizer, rule, vocabulary, batches)
    second = profile_heads(model.network, model.tokenizer, rule, vocabulary, batches)
    assert first.heads == [list(live)] and first.as_dict() == second.as_dict()
    assert first.examples == 6 and first.tokens == targets.numel()
    assert first.scores[live] < first.neutral_score - 0.05
    for pair, score in first.scores.items():
        if pair != live:
            assert score == pytest.approx(first.neutral_score, abs=1e-5), f"dead head {pair} changed the likelihood"
    chosen = first.with_heads(rule)
    assert chosen.layer_heads == [list(live)] and chosen.head_selection == "given"


def test_method_profiles_before_generating_and_records_the_heads(tmp_path):
    model = causal_lm("gpt2")
    rule = PromptAttentionBias({"instruction": 8.0}, head_selection="profiled", top_k=2, profile_examples=3)
    generation = {"max_new_tokens": 5}
    method, metrics = run_method(
        model, instruction(batch=4), KnobSettings(prompt_attention=rule), generation=generation
    )
    profile = method.head_profile
    assert profile.examples == 3 and len(profile.heads) == 2 and len(profile.scores) == 4
    explicit = KnobSettings(prompt_attention=PromptAttentionBias({"instruction": 8.0}, layer_heads=profile.heads))
    again, _ = run_method(causal_lm("gpt2"), instruction(batch=4), explicit, generation=generation)
    assert [r["output"] for r in method.generation_rows] == [r["output"] for r in again.generation_rows]
    assert metrics["test/examples"] == 8
    callback = GenerationsFile(tmp_path / "generations.jsonl")
    callback.on_test_end(None, method)
    record = json.loads(callback.profile_path.read_text())
    assert record["heads"] == profile.heads and len(record["scores"]) == 4
    assert callback.final_results()["pasta/heads"] == profile.heads


CAUSAL_RUN = ["model=hf_causal_lm", f"model.random_init_config={CAUSAL_FLAG}", "data=segments_jsonl",
              "+method.knobs.prompt_attention.values.instruction=5"]  # fmt: skip


def test_profiled_run_through_the_runner_writes_the_heads(tmp_path):
    """Profiling on a user file (here the packaged sample) through ``trustml method=knob_generator``."""
    overrides = ["method.knobs.prompt_attention.head_selection=profiled", "method.knobs.prompt_attention.top_k=3",
                 "method.knobs.prompt_attention.profile_examples=4",
                 "method.knobs.prompt_attention.profile_file=sample:instruction"]  # fmt: skip
    results = run(_compose(tmp_path, *CAUSAL_RUN, *overrides)).results
    assert len(results["pasta/heads"]) == 3 and results["pasta/profile_examples"] == 4
    assert json.loads((tmp_path / "generations.heads.json").read_text())["heads"] == results["pasta/heads"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"head_selection": "best"}, r"head_selection='best' is unknown; use one of \['given', 'profiled'\]"),
        ({"layer_heads": [[0]]}, r"give \[layer, head\] pairs"),
        ({"layer_heads": [[0, 1]], "heads": [1]}, "leave knobs.prompt_attention.layers and"),
        ({"layer_heads": [[0, 1]], "head_selection": "profiled"}, "leave knobs.prompt_attention.layer_heads unset"),
        ({"head_selection": "profiled", "top_k": 0}, "top_k=0 must be >= 1"),
        ({"head_selection": "profiled", "profile_examples": 0}, "profile_examples=0 must be >= 1"),
        ({"profile_file": "x.jsonl"}, "read by head_selection='profiled' only"),
    ],
)
def test_bad_head_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        PromptAttentionBias({"instruction": 5.0}, **options)


def test_bad_head_option_on_the_command_line_names_it(tmp_path):
    with pytest.raises(ConfigError, match="knobs.prompt_attention.head_selection='top' is unknown"):
        run(_compose(tmp_path, *CAUSAL_RUN, "method.knobs.prompt_attention.head_selection=top"))


def test_bad_heads_are_refused_when_steering_or_profiling():
    model = causal_lm("gpt2")
    inputs, _, method = prompts(model, count=2)
    vocabulary = method._builder.vocabulary
    with pytest.raises(ConfigError, match="every bias value is 1"):
        PromptAttentionBias(head_selection="profiled")
    for pairs, message in (([[2, 0]], r"layer 2 does not exist; layers are \[0, 1\]"), ([[1, 2]], "out of range")):
        rule = PromptAttentionBias({"instruction": 5.0}, layer_heads=pairs)
        with pytest.raises(ConfigError, match=message):
            CausalKnobGenerator(
                model.network, model.tokenizer, KnobSettings(prompt_attention=rule), vocabulary
            ).generate(**inputs, **GREEDY)
    profiled = PromptAttentionBias({"instruction": 5.0}, head_selection="profiled", top_k=5)
    with pytest.raises(ConfigError, match="the heads are not profiled yet"):
        CausalKnobGenerator(
            model.network, model.tokenizer, KnobSettings(prompt_attention=profiled), vocabulary
        ).generate(**inputs, **GREEDY)
    targets = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="top_k=5 exceeds the 4 candidate heads"):
        profile_heads(model.network, model.tokenizer, profiled, vocabulary, [{**inputs, "targets": targets}])
