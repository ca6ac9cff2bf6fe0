"""The fairness study of issue #16: intrinsic (CEAT) vs extrinsic (counterfactual, group) metrics of MiniLM.

    .venv/bin/python experiments/fairness/run_study.py                       # train, score, tabulate
    .venv/bin/python experiments/fairness/run_study.py --tables-only         # re-tabulate finished runs

Runs from the repository root, through the ``trustml`` and ``trustml-fairness`` command-line apps (subprocesses):

1. trains one classifier per task and seed on the offline MiniLM (``model=hf_encoder``, encoder fine-tuned:
   ``model.freeze_encoder=true`` with its last ``--trainable-last-layers`` layers trainable, so no cached
   embeddings; ``trainable_last_layers`` only acts with ``freeze_encoder=true``) with ``callbacks=fairness``
   (gender proxy of the test texts, counterfactual swaps; APS is skipped on token inputs): MASSIVE intents
   (``../shared/data/massive_add_data/updated``) and, unless ``--no-topical-chat``, Topical-Chat turn sentiment
   (the first ``--topical-conversations`` conversations of the training files, and of the test file);
2. scores CEAT (``--ceat-tests``, ``--ceat-draws`` draws, contexts from Topical-Chat ``conversations_test_freq``)
   of the offline MiniLM and of each fine-tuned encoder (``trustml-fairness run_dir=...``);
3. writes ``tables.md``, ``summary.json`` (under ``--out``) and ``ces_vs_flip_rate.png`` (beside this script):
   mean +- std over seeds, and the Spearman rank correlation across the fine-tuned models between CES (the first
   CEAT test) and the counterfactual flip rate.

A run whose ``results.json`` exists is not redone (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MASSIVE = "../shared/data/massive_add_data/updated"
CORPUS = "../shared/data/topical_chat/conversations_test_freq.json"
EXTRINSIC = (
    "test/acc",
    "fairness/flip_rate",
    "fairness/mean_abs_prob_change",
    "fairness/mean_total_variation",
    "fairness/cf_n_changed",
    "fairness/cf_n_flipped",
    "fairness/demographic_parity_difference",
    "fairness/equalized_odds_difference",
    "fairness/accuracy_difference",
    "fairness/n_test",
    "fairness/n_compared",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "logs" / "study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trainable-last-layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--no-topical-chat", action="store_true", help="train on MASSIVE only")
    p.add_argument("--topical-conversations", type=int, default=60)
    p.add_argument("--topical-epochs", type=int, default=1)
    p.add_argument("--ceat-tests", default="[weat6,weat7,weat8]")
    p.add_argument("--ceat-draws", type=int, default=1000)
    p.add_argument("--tables-only", action="store_true", help="only tabulate the runs already in --out")
    return p.parse_args(argv)


def run(cmd: list[str], run_dir: Path) -> dict:
    """Run one app into ``run_dir`` (skipped when its results.json exists); its results.json."""
    results = run_dir / "results.json"
    if not results.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        print(f"[study] {' '.join(cmd)}", flush=True)
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        print(f"[study] done in {time.monotonic() - start:.0f} s: {run_dir}", flush=True)
    return json.loads(results.read_text())


def common(run_dir: Path, out: Path, seed: int) -> list[str]:
    return [f"seed={seed}", f"paths.log_dir={out}", f"hydra.run.dir={run_dir}", "print_results=false"]


def train_jobs(a: argparse.Namespace) -> dict[str, list[str]]:
    """Training overrides per task."""
    model = [
        "model=hf_encoder",
        "model.freeze_encoder=true",
        f"model.trainable_last_layers={a.trainable_last_layers}",
        f"model.max_length={a.max_length}",
        "callbacks=fairness",
        "logger=csv",
    ]
    jobs = {
        "massive": [
            "data=text_classification",
            f"data.train_path={MASSIVE}/train.jsonl",
            f"data.val_path={MASSIVE}/dev.jsonl",
            f"data.test_path={MASSIVE}/test.jsonl",
            "data.text_field=text",
            "data.label_field=label_name",
            *model,
            f"trainer.max_epochs={a.epochs}",
        ]
    }
    if not a.no_topical_chat:
        jobs["topical_chat"] = [
            "data=topical_chat_sentiment",
            f"data.max_conversations={a.topical_conversations}",
            *model,
            f"trainer.max_epochs={a.topical_epochs}",
        ]
    return jobs


def ceat_cmd(a: argparse.Namespace, source: str, run_dir: Path) -> list[str]:
    return [
        str(BIN / "trustml-fairness"),
        source,
        f"ceat.tests={a.ceat_tests}",
        f"ceat.corpus={CORPUS}",
        f"ceat.n_draws={a.ceat_draws}",
        *common(run_dir, a.out, 0),
    ]


def fmt(v: object) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.4f}"
    return str(v)


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def tabulate(a: argparse.Namespace, runs: dict[str, dict[int, dict]], ceats: dict[str, dict]) -> str:
    """Markdown tables of the finished runs, plus summary.json and the CES-vs-flip-rate plot."""
    tests = [t.strip() for t in a.ceat_tests.strip("[]").split(",")]
    lines = [f"CEAT: {a.ceat_draws} draws, contexts from {CORPUS}; mean ± std (ddof=1) over seeds {a.seeds}.", ""]
    lines += ["### CEAT combined effect size (CES) [95% CI of one run for the baseline]", ""]
    lines += ["| encoder | " + " | ".join(f"CES {t}" for t in tests) + " |", "|---" * (len(tests) + 1) + "|"]
    base = ceats.get("minilm")
    if base:
        cells = [
            f"{base[f'ceat/{t}/ces']:.3f} [{base[f'ceat/{t}/ci_low']:.3f}, {base[f'ceat/{t}/ci_high']:.3f}]"
            for t in tests
        ]
        lines.append("| offline MiniLM (not fine-tuned) | " + " | ".join(cells) + " |")
    for task in runs:
        per_seed = [ceats[f"{task}_s{s}"] for s in a.seeds if f"{task}_s{s}" in ceats]
        if per_seed:
            cells = [mean_std([r[f"ceat/{t}/ces"] for r in per_seed]) for t in tests]
            lines.append(f"| MiniLM fine-tuned on {task} (n={len(per_seed)}) | " + " | ".join(cells) + " |")
    crows = base.get("crows_pairs/skipped") if base else None
    if crows:
        lines += ["", f"CrowS-Pairs: not computed (`crows_pairs/skipped`: {crows})."]

    for task, by_seed in runs.items():
        lines += ["", f"### Extrinsic metrics, {task} (test split, gender proxy of the texts)", ""]
        keys = [k for k in EXTRINSIC if all(k in r for r in by_seed.values())]
        counts = sorted({k for r in by_seed.values() for k in r if k.startswith("fairness/count/")})
        lines += [
            "| metric | " + " | ".join(f"seed {s}" for s in by_seed) + " | mean ± std |",
            "|---" * (len(by_seed) + 2) + "|",
        ]
        for k in keys + counts:
            vals = [by_seed[s][k] for s in by_seed]
            cells = [fmt(v) for v in vals]
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {mean_std(vals)} |")
        for k in sorted({k for r in by_seed.values() for k in r if "skipped" in k}):
            lines.append(f"\n`{k}` (seed {next(iter(by_seed))}): {next(iter(by_seed.values())).get(k)}")

    points = []  # (label, CES of the first test, flip rate)
    for task, by_seed in runs.items():
        for s, r in by_seed.items():
            c = ceats.get(f"{task}_s{s}")
            if c and "fairness/flip_rate" in r:
                points.append((f"{task}_s{s}", c[f"ceat/{tests[0]}/ces"], r["fairness/flip_rate"]))
    summary: dict = {"points": points, "n_models": len(points)}
    lines += ["", f"### Intrinsic vs extrinsic: Spearman rank correlation of CES {tests[0]} and flip rate", ""]
    if len(points) >= 3:
        from scipy.stats import spearmanr

        rho, p = spearmanr([q[1] for q in points], [q[2] for q in points])
        summary.update(spearman_rho=float(rho), spearman_p=float(p))
        lines.append(
            f"Across {len(points)} fine-tuned models ({', '.join(q[0] for q in points)}): Spearman rho = {rho:.3f}, "
            f"p = {p:.3f}."
        )
    else:
        lines.append(f"Only {len(points)} models with both metrics: no correlation computed.")
    lines += ["", "| model | CES " + tests[0] + " | flip rate |", "|---|---:|---:|"]
    lines += [f"| {q[0]} | {q[1]:.4f} | {q[2]:.4f} |" for q in points]
    plot(points, tests[0], HERE / "ces_vs_flip_rate.png")
    summary.update(ceat=ceats, runs={t: {str(s): r for s, r in b.items()} for t, b in runs.items()})
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    text = "\n".join(lines) + "\n"
    (a.out / "tables.md").write_text(text)
    return text


def plot(points: list[tuple[str, float, float]], test: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[study] matplotlib not installed: no plot", flush=True)
        return
    if not points:
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    for task, marker in (("massive", "o"), ("topical_chat", "s")):
        sel = [q for q in points if q[0].startswith(task)]
        if sel:
            ax.scatter([q[1] for q in sel], [q[2] for q in sel], marker=marker, label=task)
            for q in sel:
                ax.annotate(q[0].rsplit("_", 1)[1], (q[1], q[2]), fontsize=8)
    ax.set_xlabel(f"CEAT CES ({test})")
    ax.set_ylabel("counterfactual flip rate (test)")
    ax.set_title("Intrinsic vs extrinsic bias, fine-tuned MiniLM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict]] = {}
    ceats: dict[str, dict] = {}
    done = lambda d: (d / "results.json").exists()  # noqa: E731
    base_dir = a.out / "ceat" / "minilm"
    if not a.tables_only or done(base_dir):
        ceats["minilm"] = run(ceat_cmd(a, "encoder=null", base_dir), base_dir)
    for task, overrides in train_jobs(a).items():
        runs[task] = {}
        for seed in a.seeds:
            train_dir = a.out / "train" / f"{task}_s{seed}"
            if a.tables_only and not done(train_dir):
                continue
            runs[task][seed] = run([str(BIN / "trustml"), *overrides, *common(train_dir, a.out, seed)], train_dir)
            ceat_dir = a.out / "ceat" / f"{task}_s{seed}"
            if not a.tables_only or done(ceat_dir):
                ceats[f"{task}_s{seed}"] = run(ceat_cmd(a, f"run_dir={train_dir}", ceat_dir), ceat_dir)
        if not runs[task]:
            del runs[task]
    print(tabulate(a, runs, ceats), flush=True)


if __name__ == "__main__":
    main()
