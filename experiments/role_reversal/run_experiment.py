"""Counterfactual role-reversal distillation (Gupta et al., 2022) at CPU scale: teacher, 4 student arms x seeds.

    .venv/bin/python experiments/role_reversal/run_experiment.py                 # everything (CPU, ~1 h)
    .venv/bin/python experiments/role_reversal/run_experiment.py --tables-only   # re-tabulate finished runs

Runs from the repository root through the ``trustml`` and ``trustml-fairness`` apps (subprocesses, 1 thread):

1. teacher: ``experiment=bold_wiki_lm`` (a GPT-2 from scratch, WordPiece vocabulary trained on its training
   texts) on BOLD's profession + gender Wikipedia sentences and Topical-Chat turns (``conversations_valid_rare``),
   split by BOLD entity / conversation (test fraction ``--test-fraction``);
2. students (smaller GPT-2, the teacher's vocabulary), ``--seeds`` each, same epochs / batches for every arm:
   ``plain`` (distillation), ``cda`` (``counterfactual.augment=true``), ``rr`` (``counterfactual.teacher=mean``),
   ``cda_rr`` (both);
3. ``trustml-fairness generation`` of the teacher and every student on the BOLD profession prompts of the held-out
   (test) entities: ``--k`` continuations of ``--prompts`` prompts per profession;
4. ``tables.md`` and ``summary.json`` under ``--out``: held-out perplexity, equitability mean / min over the
   professions, share of gendered texts (mean +- std over seeds).

A run whose ``results.json`` exists is not redone (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATA = "../shared/data"
ARMS = {
    "plain": ["method.counterfactual.augment=false", "method.counterfactual.teacher=none"],
    "cda": ["method.counterfactual.augment=true", "method.counterfactual.teacher=none"],
    "rr": ["method.counterfactual.augment=false", "method.counterfactual.teacher=mean"],
    "cda_rr": ["method.counterfactual.augment=true", "method.counterfactual.teacher=mean"],
}
METRICS = (
    "test/perplexity",
    "generation/equitability_mean",
    "generation/equitability_min",
    "generation/share_gendered",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "logs" / "study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--teacher-model", default="{model_type:gpt2,n_embd:128,n_layer:3,n_head:4,n_positions:64}")
    p.add_argument("--student-model", default="{model_type:gpt2,n_embd:64,n_layer:2,n_head:2,n_positions:64}")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--max-train-texts", type=int, default=8000)
    p.add_argument("--student-train-texts", type=int, default=4000, help="a subset of the teacher's training texts")
    p.add_argument("--max-eval-texts", type=int, default=1000)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--k", type=int, default=5, help="continuations per prompt")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts per profession")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--tables-only", action="store_true")
    return p.parse_args(argv)


def run(cmd: list[str], run_dir: Path) -> dict:
    """Run one app into ``run_dir`` (skipped when its results.json exists); its results.json."""
    results = run_dir / "results.json"
    if not results.exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        print(f"[role_reversal] {' '.join(cmd)}", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True, env=env)
        print(f"[role_reversal] done in {time.monotonic() - start:.0f} s: {run_dir}", flush=True)
    return json.loads(results.read_text())


def data_overrides(args: argparse.Namespace, train_texts: int) -> list[str]:
    paths = [
        f"{DATA}/bold/wikipedia/profession_wiki.json",
        f"{DATA}/bold/wikipedia/gender_wiki.json",
        f"{DATA}/topical_chat/conversations_valid_rare.json",
    ]
    return [
        f"data.paths=[{','.join(paths)}]",
        "data.format=auto",
        f"data.test_fraction={args.test_fraction}",
        "data.val_fraction=0.1",
        f"data.max_train_texts={train_texts}",
        f"data.max_eval_texts={args.max_eval_texts}",
        "data.batch_size=64",
        f"model.max_length={args.max_length}",
        f"model.tokenizer_train_vocab_size={args.vocab}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]


def train_teacher(args: argparse.Namespace) -> Path:
    run_dir = args.out / "teacher"
    cmd = [str(BIN / "trustml"), "experiment=bold_wiki_lm", f"hydra.run.dir={run_dir}", "seed=0"]
    cmd += data_overrides(args, args.max_train_texts)
    cmd += [f"model.random_init_config={args.teacher_model}", f"trainer.max_epochs={args.teacher_epochs}"]
    cmd += ["optimizer.lr=0.002"]
    run(cmd, run_dir)
    return run_dir


def train_student(args: argparse.Namespace, teacher: Path, arm: str, seed: int) -> Path:
    run_dir = args.out / f"{arm}_seed{seed}"
    cmd = [str(BIN / "trustml"), "experiment=bold_wiki_lm", "method=distill_lm", f"hydra.run.dir={run_dir}"]
    cmd += data_overrides(args, args.student_train_texts)
    cmd += [
        f"seed={seed}",
        f"model.random_init_config={args.student_model}",
        f"trainer.max_epochs={args.student_epochs}",
        f"method.teacher_run_dir={teacher}",
        "method.temperature=2.0",
        "method.kl_weight=1.0",
        "method.hard_weight=0.5",
        "optimizer.lr=0.003",
        *ARMS[arm],
    ]
    run(cmd, run_dir)
    return run_dir


def generation(args: argparse.Namespace, model_run: Path) -> dict:
    run_dir = model_run.parent / f"{model_run.name}_generation"
    cmd = [
        str(BIN / "trustml-fairness"),
        "generation",
        f"hydra.run.dir={run_dir}",
        f"run_dir={model_run}",
        f"generation.prompts={DATA}/bold/prompts/profession_prompt.json",
        "generation.prompt_split=test",
        f"generation.k={args.k}",
        f"generation.max_prompts_per_group={args.prompts}",
        f"generation.max_new_tokens={min(args.max_new_tokens, args.max_length - 24)}",
        "generation.top_p=0.9",
        "generation.seed=0",
        "print_results=false",
    ]
    return run(cmd, run_dir)


def row(results: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and std over runs of each metric, and the counts pooled over runs (less noisy than per-run ratios)."""
    out = {}
    for metric in METRICS:
        values = np.array([r[metric] for r in results if metric in r], dtype=float)
        out[metric] = (float(values.mean()), float(values.std())) if len(values) else (float("nan"), 0.0)
    groups = sorted({k.split("/")[1] for r in results for k in r if k.endswith("/n_female")})
    n_f = {g: sum(r.get(f"generation/{g}/n_female", 0) for r in results) for g in groups}
    n_m = {g: sum(r.get(f"generation/{g}/n_male", 0) for r in results) for g in groups}
    pooled = [min(n_f[g] / n_m[g], n_m[g] / n_f[g]) if n_f[g] and n_m[g] else 0.0 for g in groups if n_f[g] + n_m[g]]
    total_f, total_m = sum(n_f.values()), sum(n_m.values())
    out["pooled_equitability_mean"] = (float(np.mean(pooled)) if pooled else float("nan"), 0.0)
    share = total_f / max(total_f + total_m, 1)
    out["female_share_of_gendered"] = (share, float(np.sqrt(share * (1 - share) / max(total_f + total_m, 1))))
    out["gendered_texts"] = (float(total_f + total_m), 0.0)
    return out


def plot(rows: dict[str, dict], path: Path) -> None:
    """Per model: held-out perplexity, equitability mean (mean +- std over seeds) and the female share of gendered
    texts (pooled, +- binomial s.e.; 0.5 = parity), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    panels = (
        ("test/perplexity", "held-out perplexity"),
        ("generation/equitability_mean", "equitability mean"),
        ("female_share_of_gendered", "female share of gendered texts"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        means = [rows[n][metric][0] for n in names]
        errors = [rows[n][metric][1] for n in names]
        ax.bar(names, means, yerr=errors, capsize=4, color=["0.6"] + ["C0"] * (len(names) - 1))
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    axes[2].axhline(0.5, color="k", linestyle=":", linewidth=1)
    fig.suptitle("Role-reversal distillation at CPU scale (error bars: std over seeds; share: binomial s.e.)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tabulate(args: argparse.Namespace) -> None:
    teacher = args.out / "teacher"
    rows: dict[str, dict] = {}
    per_run: dict[str, list[dict]] = {}
    if (teacher / "results.json").exists() and (args.out / "teacher_generation" / "results.json").exists():
        per_run["teacher"] = [
            {
                **json.loads((teacher / "results.json").read_text()),
                **json.loads((args.out / "teacher_generation" / "results.json").read_text()),
            }
        ]
    for arm in args.arms:
        found = []
        for seed in args.seeds:
            d, g = args.out / f"{arm}_seed{seed}", args.out / f"{arm}_seed{seed}_generation"
            if (d / "results.json").exists() and (g / "results.json").exists():
                found.append(
                    {**json.loads((d / "results.json").read_text()), **json.loads((g / "results.json").read_text())}
                )
        if found:
            per_run[arm] = found
    for name, results in per_run.items():
        rows[name] = {**row(results), "n": len(results)}
    lines = [
        "| model | runs | held-out perplexity | equitability mean | equitability min | share gendered "
        "| pooled equitability mean | female share of gendered texts | gendered texts (pooled) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        cells = [f"{r[m][0]:.3f} +- {r[m][1]:.3f}" for m in METRICS]
        share, share_se = r["female_share_of_gendered"]
        cells += [f"{r['pooled_equitability_mean'][0]:.3f}", f"{share:.3f} +- {share_se:.3f} (binomial s.e.)"]
        cells += [f"{r['gendered_texts'][0]:.0f}"]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    if "plain" in rows:
        base_ppl, base_eq = rows["plain"]["test/perplexity"][0], rows["plain"]["generation/equitability_mean"][0]
        lines += ["", "| arm | perplexity vs plain | disparity (1 - equitability mean) vs plain |", "|---|---|---|"]
        for name in ("cda", "rr", "cda_rr"):
            if name in rows:
                ppl = rows[name]["test/perplexity"][0] / base_ppl - 1
                disparity = (1 - rows[name]["generation/equitability_mean"][0]) / max(1 - base_eq, 1e-9) - 1
                lines.append(f"| {name} | {ppl:+.1%} | {disparity:+.1%} |")
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, "runs": per_run}, indent=1, default=str))
    if rows:
        plot(rows, HERE / "role_reversal.png")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    if not args.tables_only:
        teacher = train_teacher(args)
        generation(args, teacher)
        for seed in args.seeds:
            for arm in args.arms:
                generation(args, train_student(args, teacher, arm, seed))
                tabulate(args)
    tabulate(args)


if __name__ == "__main__":
    main()
