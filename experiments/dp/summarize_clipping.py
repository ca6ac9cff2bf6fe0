"""Automatic vs flat clipping table of experiments/dp/README.md from run_clipping.sh's sweeps.

Every run of ``LOG/clipping/<data>/<clipping>_lr<grid>/<job>/`` becomes one record (data, clipping, target
epsilon, bound C, lr, seed, val/acc_best, test/acc, epsilon spent, noise multiplier) in ``--records`` (a
committed JSON-lines file: the run folders are not kept in git). Selection rule (fixed before the runs): per
(data, clipping, target epsilon) the (C, lr) with the best mean ``val/acc_best`` over the seeds; its test accuracy
is reported as mean +- std over the seeds, with the paired difference automatic - flat (same seeds) and its 95%
t-interval.

Usage: ``python experiments/dp/summarize_clipping.py [--log LOG/clipping] [--lrs 0.1 0.5 2] [--write-readme]``
(without ``--log`` the table comes from the records file alone; ``--lrs`` selects on a sub-grid of learning rates).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from result_records import load_records, merge_records, replace_readme_block
from scipy import stats

RECORDS = Path(__file__).resolve().parent / "results" / "clipping.jsonl"
BEGIN, END = "<!-- clipping-table:start -->", "<!-- clipping-table:end -->"


def collect(log: Path) -> list[dict[str, Any]]:
    """One record per finished run under ``log``."""
    records = []
    for results_path in sorted(log.glob("*/*/*/results.json")):
        run = results_path.parent
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        results = json.loads(results_path.read_text())
        records.append(
            {
                "data": run.parent.parent.name,
                "clipping": str(cfg.optimizer.clipping),
                "target": float(cfg.optimizer.target_epsilon),
                "bound": float(cfg.optimizer.max_grad_norm),
                "lr": float(cfg.optimizer.lr),
                "seed": int(cfg.seed),
                "val_acc": results["val/acc_best"],
                "test_acc": results["test/acc"],
                "epsilon": results.get("epsilon"),
                "sigma": results.get("noise_multiplier"),
            }
        )
    return records


def selected(records: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Per (data, clipping, target): the (C, lr) with the best mean validation accuracy, and its runs by seed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["data"], r["clipping"], r["target"], r["bound"], r["lr"]), []).append(r)
    best: dict[tuple[str, str, float], dict[str, Any]] = {}
    for (data, clipping, target, bound, lr), runs in sorted(groups.items()):
        score = statistics.mean(r["val_acc"] for r in runs)
        key = (data, clipping, target)
        if key not in best or score > best[key]["val"]:
            best[key] = {"bound": bound, "lr": lr, "val": score, "runs": {r["seed"]: r for r in runs}}
    return best


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def markdown(records: list[dict[str, Any]]) -> str:
    """The table: one row per (data, clipping, target epsilon), then the paired automatic - flat differences."""
    best = selected(records)
    grid = {
        key: sorted({(r["bound"], r["lr"]) for r in records if (r["data"], r["clipping"], r["target"]) == key})
        for key in best
    }
    lines = [
        "| data | clipping | target epsilon | epsilon spent | noise multiplier | selected C, lr (of the grid) "
        "| seeds | val acc % | test acc % (mean ± std) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for key, choice in best.items():
        runs = list(choice["runs"].values())
        bounds = ", ".join(f"{b:g}" for b in sorted({b for b, _ in grid[key]}))
        lrs = ", ".join(f"{lr:g}" for lr in sorted({lr for _, lr in grid[key]}))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]:g} | {statistics.mean(r['epsilon'] for r in runs):.2f} "
            f"| {statistics.mean(r['sigma'] for r in runs):.2f} | C {choice['bound']:g}, lr {choice['lr']:g} "
            f"(C of {bounds}; lr of {lrs}) | {len(runs)} | {_mean_std([r['val_acc'] for r in runs])} "
            f"| {_mean_std([r['test_acc'] for r in runs])} |"
        )
    lines += [
        "",
        "| data | target epsilon | automatic - flat, test acc points (paired by seed) | 95% t-interval | seeds |",
        "|---|---:|---:|---|---:|",
    ]
    for (data, clipping, target), choice in best.items():
        flat = best.get((data, "flat", target))
        if clipping != "automatic" or flat is None:
            continue
        seeds = sorted(set(choice["runs"]) & set(flat["runs"]))
        diffs = [100 * (choice["runs"][s]["test_acc"] - flat["runs"][s]["test_acc"]) for s in seeds]
        if len(diffs) > 1:
            mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
            half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
            interval = f"[{mean - half:+.1f}, {mean + half:+.1f}]"
        else:
            mean, sd, interval = (diffs[0] if diffs else float("nan")), 0.0, "n/a"
        lines.append(f"| {data} | {target:g} | {mean:+.1f} ± {sd:.1f} | {interval} | {len(diffs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="LOG/clipping: add its runs to --records (same run: replaced)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--write-readme", action="store_true", help="replace the table between the README markers")
    parser.add_argument("--lrs", type=float, nargs="+", help="select among these learning rates only (a sub-grid)")
    args = parser.parse_args()
    if args.log is not None:
        merge_records(args.records, collect(args.log), key=("data", "clipping", "target", "bound", "lr", "seed"))
    records = load_records(args.records)
    if args.lrs:
        records = [r for r in records if r["lr"] in args.lrs]
    table = markdown(records)
    print(table)
    if args.write_readme:
        replace_readme_block(BEGIN, END, table)


if __name__ == "__main__":
    main()
