"""DP-SGD step time and memory: non-private vs trustml DP vs Opacus (hooks) vs Opacus (ghost clipping).

Same model weights, same batch, same process: the four variants take turns step by step (round robin),
so machine load affects them alike; the table reports each variant's median step time, its ratio to the
non-private step, and the peak memory of its steps above the memory held before them (CUDA:
``max_memory_allocated``; CPU: the rise of the peak RSS in a fresh subprocess per variant, Linux only). Two cases:

* ``digits``: scikit-learn digits (64 features, 10 classes), MLP 64-256-128-10, batch 256;
* ``minilm``: the offline all-MiniLM-L6-v2 encoder (mean pooled) + linear head on Topical-Chat turns
  (8 sentiment classes), last two transformer layers and the head trained, batch 32, max 64 tokens;
* full fine-tuning: ``minilm-layers6-BxT`` (all six transformer layers and the head trained, embeddings frozen)
  and ``minilm-all-BxT`` (every weight: word/position/token-type embeddings, every LayerNorm, attention, FFN,
  head), each at ``32x64`` and ``64x128`` (batch x max tokens; the texts are the longest turns so that batches
  fill ``T``).

A variant that cannot run a case (Opacus on every weight: "Per sample gradient is not initialized") is reported
with its error instead of numbers. The timed process runs with ``--cpu-allocator`` (default ``retain``, as every
``trustml`` run: freed memory stays in the process, :mod:`trustml.cpu_allocator`; ``system``: glibc's defaults,
under which the DP step page-faults back the memory it freed in the previous step). Usage: ``python
experiments/dp/bench_speed.py [--cases digits minilm minilm-all-32x64 ...] [--rounds 20] [--cpu-allocator
retain|system] [--variants ...] [--write-readme]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trustml.cpu_allocator import CPU_ALLOCATORS, configure_cpu_allocator
from trustml.privacy.engine import NoisePlan
from trustml.privacy.optimizers import DPSGDOptimizer
from trustml.privacy.options import DPSGDConfig

HERE = Path(__file__).resolve().parent
TOPICAL_CHAT = HERE.parents[1].parent / "shared" / "data" / "topical_chat" / "conversations_valid_freq.json"
VARIANTS = ("non-private", "trustml DP", "Opacus hooks", "Opacus ghost")
NOISE, CLIP = 1.0, 1.0

Batch = dict[str, Any]
Step = Callable[[], None]


# --- the two cases ---------------------------------------------------------------------------------------
def digits_case(device: torch.device) -> tuple[nn.Module, Batch]:
    """MLP on a batch of 256 scikit-learn digits."""
    from sklearn.datasets import load_digits

    from trustml.models.mlp import MLP, MLPConfig

    digits = load_digits()
    x = torch.tensor(digits.data[:256], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:256])
    model = MLP(MLPConfig(hidden_sizes=[256, 128], dropout=0.1), num_classes=10, input_dim=64)
    return model.to(device), {"x": x.to(device), "y": y.to(device), "index": torch.arange(256, device=device)}


def _topical_chat_turns(count: int) -> tuple[list[str], list[int]]:
    conversations = json.loads(TOPICAL_CHAT.read_text())
    turns = [turn for conv in conversations.values() for turn in conv["content"]][:count]
    labels = sorted({turn["sentiment"] for turn in turns})
    return [turn["message"] for turn in turns], [labels.index(turn["sentiment"]) for turn in turns]


def minilm_case(
    device: torch.device, trainable: str = "last2", size: int = 32, tokens: int = 64
) -> tuple[nn.Module, Batch]:
    """MiniLM classifier on ``size`` Topical-Chat turns (``tokens`` at most), trained: ``last2`` (last two layers
    and head), ``layers6`` (all six layers and head, embeddings frozen) or ``all`` (every weight)."""
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    layers = {"last2": {"trainable_last_layers": 2}, "layers6": {"trainable_last_layers": 6}}
    options = layers.get(trainable, {"freeze_encoder": False})
    config = HFEncoderConfig(cache_embeddings=False, max_length=tokens, **options)
    model = HFEncoderClassifier(config, num_classes=8)
    if trainable == "last2":
        texts, labels = _topical_chat_turns(size)
    else:  # the longest of the first 2,000 turns: batches of the full T tokens
        texts, labels = _topical_chat_turns(2000)
        longest = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[:size]
        texts, labels = [texts[i] for i in longest], [labels[i] for i in longest]
    x = model.featurize(texts)
    batch = {"x": {k: v.to(device) for k, v in x.items()}, "y": torch.tensor(labels, device=device) % 8}
    batch["index"] = torch.arange(size, device=device)
    return model.to(device), batch


CASES: dict[str, Callable[[torch.device], tuple[nn.Module, Batch]]] = {"digits": digits_case, "minilm": minilm_case}
for _trainable in ("layers6", "all"):
    for _size, _tokens in ((32, 64), (64, 128)):
        CASES[f"minilm-{_trainable}-{_size}x{_tokens}"] = partial(
            minilm_case, trainable=_trainable, size=_size, tokens=_tokens
        )


# --- the four training steps -----------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _cross_entropy(logits: Tensor, batch: Batch) -> Tensor:
    return F.cross_entropy(logits, batch["y"], reduction="none")


def make_step(variant: str, model: nn.Module, batch: Batch) -> Step:
    """One training step of ``variant`` on its own copy of ``model``."""
    model = copy.deepcopy(model).train()
    size = int(batch["y"].shape[0])
    if variant == "non-private":
        optimizer = torch.optim.SGD(_trainable(model), lr=0.01)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            _cross_entropy(model(batch["x"]), batch).mean().backward()
            optimizer.step()

        return step
    if variant == "trustml DP":
        config = DPSGDConfig(lr=0.01, noise_multiplier=NOISE, max_grad_norm=CLIP)
        dp = DPSGDOptimizer(_trainable(model), config, NoisePlan(NOISE, expected_batch_size=size))
        return lambda: dp.private_step(model, _cross_entropy, batch)
    from opacus import PrivacyEngine

    mode = {"Opacus hooks": "hooks", "Opacus ghost": "ghost"}[variant]
    private = PrivacyEngine().make_private(
        module=model,
        optimizer=torch.optim.SGD(_trainable(model), lr=0.01),
        criterion=nn.CrossEntropyLoss(),
        data_loader=DataLoader(range(size), batch_size=size),
        noise_multiplier=NOISE,
        max_grad_norm=CLIP,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    module, optimizer = private[0], private[1]
    criterion = private[2] if mode == "ghost" else nn.CrossEntropyLoss()

    def opacus_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(module(batch["x"]), batch["y"]).backward()
        optimizer.step()

    return opacus_step


# --- measurement -----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_times(steps: dict[str, Step], rounds: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each variant, the variants interleaved round by round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mib(case: str, variant: str, device: torch.device, steps: int = 3) -> float:
    """Peak memory of ``steps`` steps of one variant (CUDA in process; CPU peak-RSS rise in a subprocess)."""
    if device.type == "cuda":
        model, batch = CASES[case](device)
        step = make_step(variant, model, batch)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # Small mmap threshold: freed tensors go back to the OS at once, so RSS follows live memory.
    output = subprocess.run(
        [sys.executable, __file__, "--memory-probe", case, variant, str(steps)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return float(output.stdout.strip().splitlines()[-1])


def _rss_mib() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":")
            values[key] = int(value.split()[0]) / 1024
    return values


def _memory_probe(case: str, variant: str, steps: int) -> None:
    """Print the peak-RSS rise (MiB) over the first ``steps`` steps (Linux: resets VmHWM after set-up)."""
    torch.set_num_threads(1)
    model, batch = CASES[case](torch.device("cpu"))
    step = make_step(variant, model, batch)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _rss_mib()["VmRSS"]
    for _ in range(steps):
        step()
    print(_rss_mib()["VmHWM"] - before)


def run_case(
    case: str, rounds: int, warmup: int, device: torch.device, variants: tuple[str, ...] = VARIANTS
) -> list[dict[str, Any]]:
    """Measured rows (variant, median ms, ratio, peak MiB) of one case."""
    model, batch = CASES[case](device)
    steps, errors = {}, {}
    for variant in variants:
        try:
            steps[variant] = make_step(variant, model, batch)
            steps[variant]()  # a variant that cannot run this case fails here, not in the timed rounds
        except Exception as exc:  # noqa: BLE001 - reported in the table (e.g. Opacus on embeddings)
            steps.pop(variant, None)
            errors[variant] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    medians = median_step_times(steps, rounds, warmup, device)
    rows = []
    for variant in variants:
        if variant in errors:
            rows.append({"case": case, "variant": variant, "error": errors[variant]})
        else:
            rows.append(
                {
                    "case": case,
                    "variant": variant,
                    "median_ms": 1e3 * medians[variant],
                    "ratio": medians[variant] / medians["non-private"],
                    "peak_mib": peak_memory_mib(case, variant, device),
                }
            )
        print(rows[-1], flush=True)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The measured rows as a Markdown table."""
    lines = ["| case | variant | median step (ms) | x non-private | peak step memory (MiB) |"]
    lines.append("|---|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['variant']} | fails: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['case']} | {r['variant']} | {r['median_ms']:.1f} | {r['ratio']:.2f} | {r['peak_mib']:.1f} |"
            )
    return "\n".join(lines)


def write_readme_table(table: str, environment: str, block: str = "speed-table") -> None:
    """Put ``environment`` and ``table`` between the README's ``<!-- block -->`` and ``<!-- /block -->`` markers."""
    readme = HERE / "README.md"
    text = readme.read_text()
    begin, end = f"<!-- {block} -->", f"<!-- /{block} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} block to fill (--readme-block)")
    head, rest = text.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{environment}\n\n{table}\n{end}{rest.split(end, 1)[1]}")


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["digits", "minilm"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps shared machines comparable)")
    parser.add_argument("--write-readme", action="store_true", help="replace the table in experiments/dp/README.md")
    parser.add_argument("--readme-block", default="speed-table", help="the README block --write-readme replaces")
    parser.add_argument("--cpu-allocator", choices=CPU_ALLOCATORS, default="retain", help="of the timed process")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="non-private is always measured"
    )
    parser.add_argument("--memory-probe", nargs=3, metavar=("CASE", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(args.memory_probe[0], args.memory_probe[1], int(args.memory_probe[2]))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    retained = configure_cpu_allocator(args.cpu_allocator)
    variants = tuple(v for v in VARIANTS if v == "non-private" or v in args.variants)
    rows = [row for case in args.cases for row in run_case(case, args.rounds, args.warmup, device, variants)]
    table = markdown_table(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    environment = (
        f"Measured on {name} ({device.type}, {args.threads} thread(s)), torch {torch.__version__}, "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds, cpu_allocator={args.cpu_allocator}"
        f"{'' if retained or args.cpu_allocator == 'system' else ' (not applied: not glibc)'}; "
        "load average after the run "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}."
    )
    print(table)
    if args.write_readme:
        write_readme_table(table, environment, args.readme_block)


if __name__ == "__main__":
    main()
