"""Epoch time of ``method=distill_lm`` with cached teacher targets vs plain ``method=lm`` (same data, model, batches).

    .venv/bin/python experiments/role_reversal/bench_distill.py --teacher experiments/role_reversal/logs/study/teacher

Each repeat trains the same student config for ``--epochs`` epochs with ``method=lm``, with ``method=distill_lm``
(cache, ``counterfactual.teacher=mean``: two teacher passes per text, done once before training; at each of
``--temperatures``: at ``T = 1`` one log-softmax of the student serves both loss terms, at ``T != 1`` the KL term
needs a second one over the vocabulary) and, unless
``--no-uncached``, with ``method.cache_teacher=false`` (the teacher on every batch). The time of an epoch is the
``epoch_time_s`` column of ``metrics.csv`` (training batches only; the cache is filled in ``on_fit_start``, before
the first epoch, and reported separately from the run's log). Reported: per variant the median over repeats of the
median epoch time of a run, and the ratio to ``method=lm`` (target <= 1.2 with the cache). Writes ``bench.md`` and
``bench.json`` under ``--out``. Runs with one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATA = "../shared/data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", type=Path, required=True, help="a completed model=hf_causal_lm run (the teacher)")
    p.add_argument("--out", type=Path, default=HERE / "logs" / "bench")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-train-texts", type=int, default=4000)
    p.add_argument("--student-model", default="{model_type:gpt2,n_embd:64,n_layer:2,n_head:2,n_positions:64}")
    p.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 1.0], help="distillation temperatures")
    p.add_argument("--no-uncached", action="store_true", help="skip the cache_teacher=false variant")
    return p.parse_args(argv)


def teacher_data(teacher: Path) -> list[str]:
    """The teacher run's data and tokenizer options, so the student reads the same texts with its vocabulary."""
    config = json.loads((teacher / "run.json").read_text())["config"]
    data, model = config["data"], config["model"]
    return [
        f"data.paths=[{','.join(data['paths'])}]",
        "data.format=auto",
        f"data.test_fraction={data['test_fraction']}",
        f"data.val_fraction={data['val_fraction']}",
        "data.batch_size=64",
        "data.max_eval_texts=500",
        f"model.max_length={model['max_length']}",
        f"model.tokenizer_train_vocab_size={model['tokenizer_train_vocab_size']}",
    ]


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    distill = [
        "method=distill_lm",
        f"method.teacher_run_dir={args.teacher.resolve()}",
        "method.counterfactual.teacher=mean",
    ]
    out = {"lm": ["method=lm"]}
    for t in args.temperatures:
        out[f"distill_lm (cached, T={t:g})"] = [*distill, f"method.temperature={t}"]
    if not args.no_uncached:
        t = args.temperatures[0]
        out[f"distill_lm (uncached, T={t:g})"] = [*distill, f"method.temperature={t}", "method.cache_teacher=false"]
    return out


def one_run(args: argparse.Namespace, name: str, overrides: list[str], repeat: int) -> dict:
    run_dir = args.out / f"{re.sub(r'[^a-z0-9_]+', '_', name.lower()).strip('_')}_r{repeat}"
    cmd = [
        str(BIN / "trustml"),
        "experiment=bold_wiki_lm",
        f"hydra.run.dir={run_dir}",
        "seed=0",
        *teacher_data(args.teacher),
        f"data.max_train_texts={args.max_train_texts}",
        f"model.random_init_config={args.student_model}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    print(f"[bench] {name} repeat {repeat}", flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    with (run_dir / "metrics.csv").open() as f:
        epochs = [float(row["epoch_time_s"]) for row in csv.DictReader(f) if row.get("epoch_time_s")]
    cached = re.search(r"teacher targets of (\d+) texts cached in ([\d.]+)s", out.stdout + out.stderr)
    return {
        "epoch_times_s": epochs,
        "median_epoch_s": statistics.median(epochs),
        "cache_fill_s": float(cached.group(2)) if cached else None,
        "cached_texts": int(cached.group(1)) if cached else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in variants(args)}
    for repeat in range(args.repeats):  # interleaved, so that machine load drifts hit every variant alike
        for name, overrides in variants(args).items():
            runs[name].append(one_run(args, name, overrides, repeat))
    base = statistics.median(r["median_epoch_s"] for r in runs["lm"])
    lines = [
        f"{args.repeats} repeats x {args.epochs} epochs, {args.max_train_texts} training texts, 1 thread",
        "",
        "| variant | median epoch time (s) | vs method=lm | cache fill (s, once) |",
        "|---|---|---|---|",
    ]
    summary = {}
    for name, results in runs.items():
        median = statistics.median(r["median_epoch_s"] for r in results)
        fills = [r["cache_fill_s"] for r in results if r["cache_fill_s"] is not None]
        fill = f"{statistics.median(fills):.1f}" if fills else "-"
        lines.append(f"| {name} | {median:.2f} | {median / base:.2f}x | {fill} |")
        summary[name] = {"median_epoch_s": median, "ratio_to_lm": median / base, "runs": results}
    (args.out / "bench.md").write_text("\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
