"""``method=knob_generator``: neutral knobs = vanilla ``generate()`` on both families, knob effects, knob B on
causal LMs, the scorer and the paired comparison, training, refusals, and runs through the runner and ``-m``."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import compose_train, read_json
from tests.knobs.conftest import TINY_BART, tiny_model
from tests.lm.conftest import run_app_in_process
from trustml.data.segments_jsonl import SegmentsJsonl, SegmentsJsonlConfig
from trustml.errors import ConfigError
from trustml.knobs.attention_knobs import CrossAttentionBias, SelfAttentionBias
from trustml.knobs.generator import CausalKnobGenerator, KnobSettings
from trustml.methods.knob_generator import KnobGeneratorConfig, KnobGeneratorMethod, corpus_metrics
from trustml.models.hf_causal_lm import HFCausalLM, HFCausalLMConfig
from trustml.models.hf_seq2seq import HFSeq2SeqConfig, HFSeq2SeqModel
from trustml.runner import run

GROUNDED = "knowledge: {knowledge} history: {history}"
INSTRUCTION = "Instruction: {instruction}\nText: {text}\nAnswer:"
#: Tiny random decoder-only configs (init std 0.5, so that greedy outputs vary from input to input).
CAUSAL = {
    "gpt2": {"model_type": "gpt2", "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 128},
    "llama": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128},
    "qwen2": {"model_type": "qwen2", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128},
}  # fmt: skip
CAUSAL_FLAG = "{model_type:gpt2,n_embd:16,n_layer:2,n_head:2,n_positions:128}"


def causal_lm(arch: str, implementation: str = "sdpa", seed: int = 0) -> HFCausalLM:
    torch.manual_seed(seed)
    config = {**CAUSAL[arch], "initializer_range": 0.5}
    return HFCausalLM(HFCausalLMConfig(random_init_config=config, attn_implementation=implementation)).eval()


def seq2seq(arch: str, tokenizer, implementation: str = "sdpa", seed: int = 0) -> HFSeq2SeqModel:
    """The ``hf_seq2seq`` plugin holding a tiny random ``arch`` network (init std 0.5)."""
    shell = {"model_type": "bart", "d_model": 8, "encoder_layers": 1, "decoder_layers": 1}
    heads = {"encoder_attention_heads": 1, "decoder_attention_heads": 1, "encoder_ffn_dim": 8, "decoder_ffn_dim": 8}
    model = HFSeq2SeqModel(HFSeq2SeqConfig(random_init_config={**shell, **heads}))
    model.network = tiny_model(arch, implementation, tokenizer, seed=seed, init=0.5)
    return model.eval()


def grounded(batch: int = 3) -> SegmentsJsonl:
    return SegmentsJsonl(SegmentsJsonlConfig(path="sample:grounded", template=GROUNDED, eval_batch_size=batch))


def instruction(batch: int = 3) -> SegmentsJsonl:
    return SegmentsJsonl(SegmentsJsonlConfig(path="sample:instruction", template=INSTRUCTION, eval_batch_size=batch))


def run_method(model, data, knobs: KnobSettings | None = None, **options) -> tuple[KnobGeneratorMethod, dict]:
    """Test ``method=knob_generator`` on ``data`` with a plain Lightning trainer; the method and its metrics."""
    config = KnobGeneratorConfig(knobs=knobs or KnobSettings(), **options)
    method = KnobGeneratorMethod(config, model=model, optimizer=None)
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False
    )
    return method, trainer.test(method, datamodule=data, verbose=False)[0]


def vanilla_outputs(method: KnobGeneratorMethod, data: SegmentsJsonl, generation: dict) -> list[str]:
    """``network.generate`` on the method's own inputs, batch by batch, seeded as the method seeds."""
    outputs = []
    for index, batch in enumerate(data.test_dataloader()):
        inputs = method._builder([e.segments for e in batch["x"]])
        torch.manual_seed(method.config.generation_seed + index)
        kwargs = {**generation, **method._generate_kwargs()}
        ids = inputs["input_ids"]
        tokens = method.model.network.generate(input_ids=ids, attention_mask=inputs["attention_mask"], **kwargs)
        tokens = tokens[:, ids.shape[1] :] if method.causal else tokens
        outputs += [t.strip() for t in method.model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return outputs


DECODING = {
    "greedy": {"max_new_tokens": 6},
    "sampling": {"max_new_tokens": 6, "do_sample": True, "top_k": 20},
    "beam": {"max_new_tokens": 6, "num_beams": 2},
    "no_cache": {"max_new_tokens": 6, "use_cache": False},
}
CASES = [(arch, "greedy") for arch in ("bart", "t5", "bert2bert", "gpt2", "llama", "qwen2")]
CASES += [(arch, d) for arch in ("bart", "gpt2") for d in ("sampling", "beam", "no_cache")]


@pytest.mark.parametrize(("arch", "decoding"), CASES)
def test_neutral_knobs_reproduce_vanilla_generate(arch, decoding, tokenizer):
    model = causal_lm(arch) if arch in CAUSAL else seq2seq(arch, tokenizer)
    data = instruction() if arch in CAUSAL else grounded()
    generation = DECODING[decoding]
    method, metrics = run_method(model, data, generation=generation)
    outputs = [row["output"] for row in method.generation_rows]
    assert outputs == vanilla_outputs(method, data, generation)
    assert len(set(outputs)) > 1, "degenerate outputs make this comparison weak"
    assert metrics["test/paired_changed"] == 0.0 and metrics["test/examples"] == len(outputs)


@pytest.mark.parametrize(
    ("arch", "implementation"), [("gpt2", "eager"), ("gpt2", "sdpa"), ("llama", "sdpa"), ("qwen2", "eager")]
)
def test_prompt_knobs_on_decoder_only_models(arch, implementation):
    """A zero bias through the full mask path (heads=[]) is vanilla; A, C, D change the reference likelihood and
    give the same tokens with the KV cache on and off."""
    model = causal_lm(arch, implementation)
    data = instruction(batch=8)
    data.setup()
    examples = data.splits["test"].inputs
    neutral, _ = run_method(model, data, compare_neutral=False)
    builder = neutral._builder
    inputs = builder([e.segments for e in examples])
    zero = KnobSettings(prompt_attention=CrossAttentionBias({"instruction": 9.0}, heads=[]))
    kwargs = {"max_new_tokens": 5, "pad_token_id": 0, "eos_token_id": None}
    vanilla = model.network.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
    hooked = CausalKnobGenerator(model.network, model.tokenizer, zero, vocabulary=builder.vocabulary)
    assert torch.equal(hooked.generate(**inputs, **kwargs), vanilla[:, inputs["input_ids"].shape[1] :])
    base = neutral.generation_rows[0]["metrics"]["reference_nll"]
    for knobs in (
        KnobSettings(prompt_attention=CrossAttentionBias({"instruction": 20.0})),
        KnobSettings(self_attention=SelfAttentionBias({"start": 0.05, "current": 20.0})),
        KnobSettings(control_phrases=["what do you think?", "answer yes"]),
    ):
        generator = CausalKnobGenerator(model.network, model.tokenizer, knobs, vocabulary=builder.vocabulary)
        for search in ({}, {"num_beams": 2}):
            cached = generator.generate(**inputs, **kwargs, **search)
            assert torch.equal(cached, generator.generate(**inputs, **kwargs, **search, use_cache=False))
        targets = neutral._causal_targets([examples[0].target])
        first = {k: v[:1] for k, v in inputs.items()}
        assert float(generator.reference_token_nll(targets=targets, **first).sum()) != pytest.approx(base, rel=1e-4)


def test_seq2seq_knobs_change_the_reference_likelihood(tokenizer):
    data = grounded()
    options = {"compare_neutral": False, "generation": {"max_new_tokens": 2}}
    _, neutral = run_method(seq2seq("bart", tokenizer), data, **options)
    for knobs in (
        KnobSettings(cross_attention=CrossAttentionBias({"knowledge": 10.0})),
        KnobSettings(self_attention=SelfAttentionBias({"start": 10.0})),
        KnobSettings(control_phrases=["do you like it?"]),
    ):
        _, metrics = run_method(seq2seq("bart", tokenizer), data, knobs, **options)
        assert metrics["test/reference_perplexity"] != pytest.approx(neutral["test/reference_perplexity"], rel=1e-4)


def test_mixing_two_causal_lms():
    """lambda = 1 is the secondary model's own greedy output; a mixture gives the same beams with and without
    the KV cache (the secondary's cache follows beam reordering)."""
    data = instruction(batch=8)
    options = {"secondary": {"random_init_config": {**CAUSAL["gpt2"], "initializer_range": 0.5}}}
    greedy = {"max_new_tokens": 6}
    method, _ = run_method(causal_lm("gpt2"), data, KnobSettings(mixing_weight=1.0), generation=greedy, **options)
    alone, _ = run_method(method.secondary, data, generation=greedy)
    mixed = [r["output"] for r in method.generation_rows]
    assert mixed == [r["output"] for r in alone.generation_rows]
    assert mixed != [r["neutral_output"] for r in method.generation_rows]
    half = KnobSettings(mixing_weight=0.5)
    beams = {"max_new_tokens": 6, "num_beams": 3}
    cached, _ = run_method(causal_lm("gpt2"), data, half, generation=beams, **options)
    uncached, _ = run_method(causal_lm("gpt2"), data, half, generation={**beams, "use_cache": False}, **options)
    assert [r["output"] for r in cached.generation_rows] == [r["output"] for r in uncached.generation_rows]


def test_scorer_perplexity_is_the_scorer_likelihood_of_the_outputs():
    data = instruction()
    method, metrics = run_method(causal_lm("gpt2"), data, scorer={"random_init_config": dict(CAUSAL["llama"])})
    rows = method.generation_rows
    encoded = method.scorer.encode([rows[0]["output"]])
    logits = method.scorer.network(**encoded).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, encoded["input_ids"][0, 1:], reduction="sum")
    assert rows[0]["metrics"]["scorer_nll"] == pytest.approx(float(nll), rel=1e-4)
    total = sum(r["metrics"]["scorer_nll"] for r in rows) / sum(r["metrics"]["scorer_tokens"] for r in rows)
    assert metrics["test/scorer_perplexity"] == pytest.approx(math.exp(total), rel=1e-4)


def test_paired_comparison_counts_directions():
    def row(output, neutral, f1, neutral_f1):
        metrics = {"question": float("?" in output), "length": 1.0, "reference_f1": f1}
        neutral_metrics = {"question": float("?" in neutral), "length": 1.0, "reference_f1": neutral_f1}
        return {"output": output, "changed": output != neutral, "metrics": metrics, "neutral_metrics": neutral_metrics}

    rows = [row("a?", "a", 0.5, 0.25), row("b", "b", 0.5, 0.5), row("c", "d", 0.0, 1.0), row("e?", "f?", 1.0, 0.5)]
    metrics = corpus_metrics(rows)
    assert metrics["paired_changed"] == 0.75
    assert (metrics["paired_reference_f1_higher"], metrics["paired_reference_f1_lower"]) == (0.5, 0.25)
    assert metrics["paired_reference_f1_delta"] == pytest.approx((0.25 + 0 - 1.0 + 0.5) / 4)
    assert (metrics["paired_question_higher"], metrics["paired_question_lower"]) == (0.25, 0.0)
    assert "paired_knowledge_f1_delta" not in metrics  # no example has a knowledge segment


def _compose(tmp_path, *overrides):
    base = ["method=knob_generator", "logger=none", "trainer.max_epochs=0", "method.generation.max_new_tokens=4"]
    return compose_train([*base, *overrides], tmp_path)


SEQ2SEQ_DATA = ["model=hf_seq2seq", f"model.random_init_config={TINY_BART}", "data=segments_jsonl",
                "data.path=sample:grounded", f"data.template='{GROUNDED}'"]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+method.knobs.cross_attention.values.topic=3"], r"segment\(s\) \['topic'\] that the data do not have"),
        (["+method.knobs.prompt_attention.values.knowledge=3"], "use method.knobs.cross_attention"),
        (["trainer.max_epochs=2"], "data.train_path is unset"),
        (["method.knobs.mixing_weight=0.5"], "mixes with a second model: set method.secondary_run_dir"),
        (["+method.generation.num_return_sequences=2"], "keeps one output per input"),
        (["method.control_phrases_file=/nonexistent.txt"], "is not a file"),
    ],
)
def test_bad_compositions_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(_compose(tmp_path, *SEQ2SEQ_DATA, *overrides))


def test_decoder_only_refuses_cross_attention_and_mixing_with_a_soft_prompt():
    model = causal_lm("gpt2")
    with pytest.raises(ConfigError, match="does not have; use knobs.prompt_attention"):
        CausalKnobGenerator(model.network, model.tokenizer, KnobSettings(cross_attention=CrossAttentionBias({"a": 2})))
    with pytest.raises(ConfigError, match="do not combine"):
        CausalKnobGenerator(model.network, model.tokenizer, KnobSettings(mixing_weight=0.5, control_phrases=["x"]))


def test_too_long_input_names_the_line_and_the_option(tmp_path):
    with pytest.raises(Exception, match=r"line 1\) is \d+ tokens, longer than the 8 the model reads") as error:
        run(_compose(tmp_path, *SEQ2SEQ_DATA, "model.max_source_length=8"))
    assert "model.max_source_length" in str(error.value) and "data.max_segment_tokens" in str(error.value)


def test_training_then_generating_in_one_run_lowers_the_reference_perplexity(tmp_path):
    data = ["data.train_path=sample:grounded", "data.batch_size=6", "optimizer.lr=0.03", "callbacks=none"]
    untrained = run(_compose(tmp_path / "a", *SEQ2SEQ_DATA, *data)).results
    trained = run(_compose(tmp_path / "b", *SEQ2SEQ_DATA, *data, "trainer.max_epochs=10")).results
    assert trained["test/reference_perplexity"] < 0.2 * untrained["test/reference_perplexity"]


def test_decoder_only_runs_through_the_runner(tmp_path):
    overrides = ["model=hf_causal_lm", f"model.random_init_config={CAUSAL_FLAG}", "data=segments_jsonl",
                 "+method.knobs.prompt_attention.values.instruction=5"]  # fmt: skip
    results = run(_compose(tmp_path, *overrides)).results
    assert results["test/examples"] == 8 and "test/reference_perplexity" in results


def test_cli_sweep_writes_generations_and_results(tmp_path):
    """``trustml -m`` (in-process, as its command line runs) over two values of knob A."""
    overrides = [
        *SEQ2SEQ_DATA,
        "method=knob_generator",
        "trainer.max_epochs=0",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "print_results=false",
        "method.generation.max_new_tokens=4",
        "+method.knobs.cross_attention.values.knowledge=1,8",
    ]
    assert run_app_in_process(tmp_path / "run", overrides, argv_prefix=("-m",)) == 0
    (sweep,) = list((tmp_path / "logs" / "multiruns").iterdir())
    results = [read_json(sweep / job / "results.json") for job in ("0", "1")]
    for job in ("0", "1"):
        assert read_json(sweep / job / "run.json")["status"] == "completed"
        rows = [json.loads(line) for line in (sweep / job / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and {"input", "segments", "output", "neutral_output", "metrics"} <= set(rows[0])
        assert rows[0]["input"].startswith("knowledge : football")
    assert results[0]["test/reference_perplexity"] != pytest.approx(results[1]["test/reference_perplexity"])
    assert "test/reference_perplexity" in (sweep / "summary.csv").read_text()


def test_control_phrases_come_from_a_file(tmp_path):
    assert len(KnobGeneratorConfig(control_phrases_file="sample:questions").knobs.control_phrases) == 10
    phrases = tmp_path / "topics.txt"
    phrases.write_text("tell me about football\n\n  and jazz  \n")
    assert KnobGeneratorConfig(control_phrases_file=str(phrases)).knobs.control_phrases == [
        "tell me about football",
        "and jazz",
    ]
    with pytest.raises(ConfigError, match="give one of method.knobs.control_phrases and method.control_phrases_file"):
        KnobGeneratorConfig(knobs=KnobSettings(control_phrases=["x"]), control_phrases_file=str(phrases))
