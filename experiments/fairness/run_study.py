"""The fairness study of issue #16: intrinsic (CEAT) vs extrinsic (counterfactual, group) metrics of MiniLM.

    .venv/bin/python experiments/fairness/run_study.py                       # train, score, tabulate
    .venv/bin/python experiments/fairness/run_study.py --tables-only         # re-tabulate finished runs

Runs from the repository root, through the ``trustml`` and ``trustml-fairness`` command-line apps (subprocesses):

1. trains one classifier per task and seed on the offline MiniLM (``model=hf_encoder``), in two variants:
   *fine-tuned* (``model.freeze_encoder=true`` with its last ``--trainable-last-layers`` layers trainable;
   ``trainable_last_layers`` only acts with ``freeze_encoder=true``) and, unless ``--no-frozen``, *frozen* (the
   un-fine-tuned MiniLM with a trained linear head; ``model.cache_embeddings=false`` so that its test inputs are
   token ids too and its APS is taken over the same word embeddings as the fine-tuned models'), each with
   ``callbacks=fairness`` (gender proxy of the test texts, counterfactual swaps, accumulated prediction
   sensitivity with ``--aps-weights`` class weights): MASSIVE intents (``../shared/data/massive_add_data/updated``)
   and, unless ``--no-topical-chat``, Topical-Chat turn sentiment (the first ``--topical-conversations``
   conversations of the training files, and of the test file);
2. scores CEAT (``--ceat-tests``, ``--ceat-draws`` draws, contexts from Topical-Chat ``conversations_test_freq``)
   of the offline MiniLM (which is also the frozen classifiers' encoder) and of each fine-tuned encoder
   (``trustml-fairness run_dir=...``), and CrowS-Pairs of ``--mlm`` when given (e.g. the MLM head trained by
   ``train_mlm_head.py``);
3. writes ``tables.md``, ``summary.json`` and ``ces_vs_extrinsic.png`` (all under ``--out``; the tracked
   ``ces_vs_flip_rate.png`` beside this script is the first run's plot, made by an earlier version): tables of
   mean +- std over seeds, and Spearman rank correlations across all classifiers between CES (the first CEAT test)
   and each extrinsic metric (flip rate, APS), with a bootstrap 95% interval over the classifiers.

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
    "fairness/aps",
    "fairness/aps_std",
    "fairness/aps_protected_model_acc",
)
CORRELATED = ("fairness/flip_rate", "fairness/aps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "logs" / "study2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trainable-last-layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--no-topical-chat", action="store_true", help="train on MASSIVE only")
    p.add_argument("--topical-conversations", type=int, default=60)
    p.add_argument("--topical-epochs", type=int, default=1)
    p.add_argument("--ceat-tests", default="[weat6,weat7,weat8]")
    p.add_argument("--ceat-draws", type=int, default=1000)
    p.add_argument("--no-frozen", action="store_true", help="skip the frozen-MiniLM classifiers")
    p.add_argument("--aps-weights", default="predicted", choices=["predicted", "uniform"])
    p.add_argument("--aps-samples", type=int, default=None, help="APS over a seeded sample of this many test texts")
    p.add_argument("--tasks", nargs="+", default=None, help="run only these tasks, in this order (default: all)")
    p.add_argument("--mlm", default=None, help="a masked LM (name or folder) to score CrowS-Pairs with")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the rank correlation")
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
    """Training overrides per task (``<task>``: fine-tuned last layers; ``<task>_frozen``: frozen MiniLM + head)."""
    common_model = [
        "model=hf_encoder",
        "model.freeze_encoder=true",
        f"model.max_length={a.max_length}",
        "callbacks=fairness",
        f"++callbacks.fairness.sensitivity_weights={a.aps_weights}",
        *([f"++callbacks.fairness.sensitivity_max_samples={a.aps_samples}"] if a.aps_samples else []),
        "logger=csv",
    ]
    variants = {"": [f"model.trainable_last_layers={a.trainable_last_layers}"]}
    if not a.no_frozen:
        variants["_frozen"] = ["model.trainable_last_layers=0", "model.cache_embeddings=false"]
    data = {
        "massive": [
            "data=text_classification",
            f"data.train_path={MASSIVE}/train.jsonl",
            f"data.val_path={MASSIVE}/dev.jsonl",
            f"data.test_path={MASSIVE}/test.jsonl",
            "data.text_field=text",
            "data.label_field=label_name",
            f"trainer.max_epochs={a.epochs}",
        ]
    }
    if not a.no_topical_chat:
        data["topical_chat"] = [
            "data=topical_chat_sentiment",
            f"data.max_conversations={a.topical_conversations}",
            f"trainer.max_epochs={a.topical_epochs}",
        ]
    jobs = {task + suffix: [*d, *common_model, *v] for suffix, v in variants.items() for task, d in data.items()}
    if a.tasks:
        unknown = sorted(set(a.tasks) - set(jobs))
        if unknown:
            raise SystemExit(f"--tasks: unknown {unknown}; choose from {sorted(jobs)}")
        jobs = {task: jobs[task] for task in a.tasks}
    return jobs


def ceat_cmd(a: argparse.Namespace, source: str, run_dir: Path, mlm: str | None = None) -> list[str]:
    return [
        str(BIN / "trustml-fairness"),
        source,
        f"ceat.tests={a.ceat_tests}",
        f"ceat.corpus={CORPUS}",
        f"ceat.n_draws={a.ceat_draws}",
        *([f"crows_pairs.mlm={mlm}"] if mlm else []),
        "extrinsic.enabled=false",  # the classifiers' extrinsic metrics come from their callbacks=fairness
        *common(run_dir, a.out, 0),
    ]


def spearman_with_bootstrap(x: list[float], y: list[float], n_boot: int, seed: int = 0) -> dict[str, float]:
    """Spearman rho, its p-value, and a percentile bootstrap 95% interval (resampling the models with replacement;
    resamples whose x or y is constant are dropped and counted)."""
    from scipy.stats import spearmanr

    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho, p = spearmanr(x_arr, y_arr)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x_arr), len(x_arr))
        if np.ptp(x_arr[idx]) > 0 and np.ptp(y_arr[idx]) > 0:
            boots.append(spearmanr(x_arr[idx], y_arr[idx])[0])
    low, high = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return {"rho": float(rho), "p": float(p), "ci_low": float(low), "ci_high": float(high), "n_boot_used": len(boots)}


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
        if task.endswith("_frozen"):
            continue  # the frozen classifiers' encoder is the offline MiniLM (first row)
        per_seed = [ceats[f"{task}_s{s}"] for s in a.seeds if f"{task}_s{s}" in ceats]
        if per_seed:
            cells = [mean_std([r[f"ceat/{t}/ces"] for r in per_seed]) for t in tests]
            lines.append(f"| MiniLM fine-tuned on {task} (n={len(per_seed)}) | " + " | ".join(cells) + " |")
    crows = base.get("crows_pairs/skipped") if base else None
    if crows:
        lines += ["", f"CrowS-Pairs: not computed (`crows_pairs/skipped`: {crows})."]
    mlm_scores = ceats.get("mlm")
    if mlm_scores and "crows_pairs/metric" in mlm_scores:
        lines += [
            "",
            f"### CrowS-Pairs of --mlm {a.mlm} (100 x share of pairs preferring the more stereotyping one)",
            "",
        ]
        types = sorted(k.split("/")[1] for k in mlm_scores if k.endswith("/metric") and k.count("/") == 2)
        lines += ["| metric | stereo | antistereo | n pairs | neutral | " + " | ".join(types) + " |"]
        lines += ["|---" * (5 + len(types)) + "|"]
        cells = [f"{mlm_scores[f'crows_pairs/{k}']:.2f}" for k in ("metric", "stereo", "antistereo")]
        cells += [str(mlm_scores["crows_pairs/n_pairs"]), str(mlm_scores["crows_pairs/n_neutral"])]
        cells += [
            f"{mlm_scores[f'crows_pairs/{t}/metric']:.1f} (n={mlm_scores[f'crows_pairs/{t}/n_pairs']})" for t in types
        ]
        lines.append("| " + " | ".join(cells) + " |")

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

    points = []  # (label, CES of the first test, flip rate, APS)
    for task, by_seed in runs.items():
        for s, r in by_seed.items():
            c = ceats.get("minilm" if task.endswith("_frozen") else f"{task}_s{s}")
            if c and all(k in r for k in CORRELATED):
                points.append((f"{task}_s{s}", c[f"ceat/{tests[0]}/ces"], *(float(r[k]) for k in CORRELATED)))
    summary: dict = {"points": points, "n_models": len(points), "correlations": {}}
    for column, key in enumerate(CORRELATED, start=2):
        lines += ["", f"### Intrinsic vs extrinsic: Spearman rank correlation of CES {tests[0]} and {key}", ""]
        if len(points) >= 3:
            corr = spearman_with_bootstrap([q[1] for q in points], [q[column] for q in points], a.bootstrap)
            summary["correlations"][key] = corr
            lines.append(
                f"Across {len(points)} classifiers: Spearman rho = {corr['rho']:.3f}, p = {corr['p']:.3f}, bootstrap "
                f"95% interval over classifiers [{corr['ci_low']:.2f}, {corr['ci_high']:.2f}] ({corr['n_boot_used']} "
                f"of {a.bootstrap} resamples usable). The frozen classifiers share the offline MiniLM's CES (ties)."
            )
        else:
            lines.append(f"Only {len(points)} models with both metrics: no correlation computed.")
    lines += ["", "| model | CES " + tests[0] + " | flip rate | APS |", "|---|---:|---:|---:|"]
    lines += [f"| {q[0]} | {q[1]:.4f} | {q[2]:.4f} | {q[3]:.3g} |" for q in points]
    plot(points, tests[0], a.out / "ces_vs_extrinsic.png")
    summary.update(ceat=ceats, runs={t: {str(s): r for s, r in b.items()} for t, b in runs.items()})
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    text = "\n".join(lines) + "\n"
    (a.out / "tables.md").write_text(text)
    return text


def plot(points: list[tuple], test: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[study] matplotlib not installed: no plot", flush=True)
        return
    if not points:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, label in ((axes[0], 2, "counterfactual flip rate (test)"), (axes[1], 3, "APS (test)")):
        for task, marker in (
            ("massive", "o"),
            ("topical_chat", "s"),
            ("massive_frozen", "^"),
            ("topical_chat_frozen", "v"),
        ):
            sel = [q for q in points if q[0].rsplit("_", 1)[0] == task]
            if sel:
                ax.scatter([q[1] for q in sel], [q[column] for q in sel], marker=marker, label=task)
                for q in sel:
                    ax.annotate(q[0].rsplit("_", 1)[1], (q[1], q[column]), fontsize=8)
        ax.set_xlabel(f"CEAT CES ({test})")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Intrinsic vs extrinsic bias: MiniLM classifiers (frozen and last-2-layers fine-tuned)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    ceats: dict[str, dict] = {}
    done = lambda d: (d / "results.json").exists()  # noqa: E731
    base_dir = a.out / "ceat" / "minilm"
    if not a.tables_only or done(base_dir):
        ceats["minilm"] = run(ceat_cmd(a, "encoder=null", base_dir), base_dir)
    mlm_dir = a.out / "crows_pairs" / "mlm"
    if a.mlm and (not a.tables_only or done(mlm_dir)):
        crows = [*ceat_cmd(a, "encoder=null", mlm_dir, a.mlm), "ceat.enabled=false"]
        ceats["mlm"] = run(crows, mlm_dir)
    jobs = train_jobs(a)
    runs = {task: {} for task in jobs}
    for seed in a.seeds:  # seed by seed, so that a partial run has every variant of the first seeds
        for task, overrides in jobs.items():
            train_dir = a.out / "train" / f"{task}_s{seed}"
            if a.tables_only and not done(train_dir):
                continue
            runs[task][seed] = run([str(BIN / "trustml"), *overrides, *common(train_dir, a.out, seed)], train_dir)
            ceat_dir = a.out / "ceat" / f"{task}_s{seed}"
            if task.endswith("_frozen"):
                continue  # its encoder is the offline MiniLM, scored once above
            if not a.tables_only or done(ceat_dir):
                ceats[f"{task}_s{seed}"] = run(ceat_cmd(a, f"run_dir={train_dir}", ceat_dir), ceat_dir)
    runs = {task: by_seed for task, by_seed in runs.items() if by_seed}
    print(tabulate(a, runs, ceats), flush=True)


if __name__ == "__main__":
    main()
