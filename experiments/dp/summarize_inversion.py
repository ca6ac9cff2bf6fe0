"""The canary-inversion table of experiments/dp/README.md from the logs of run_inversion.sh.

One record per attacked canary (model, secret length, training arm, repetitions, canary, the attacked
checkpoint's test accuracy, epsilon, the ModIvA rank and read-off, the exposure rank) is collected from the run
folders ``LOG/inversion/<model>/len<L>/<arm>/reps<R>/<canary>/`` into ``--records`` (a committed JSON-lines file,
since the run folders are not kept in git); the table is computed from that file. The early-stopping arm is the
``none`` arm's runs attacked on their best-validation checkpoint (``invert_best/``, ``exposure_best/``).

Per cell: how many canaries, mean test accuracy, epsilon, and per attack the number of canaries whose secret ranks
first and in the top 10 with the median rank: ModIvA (``trustml-audit invert``: rank under the attack's final
distribution, no candidate list) and the exposure ranking (``trustml-audit canary``: every candidate scored by the
classifier's loss), with a 95% Wilson interval on ModIvA's success@10, and per attack the p-value of "the secrets
rank no better than chance": a secret drawn uniformly at random and never seen by the model has a uniform rank, so
``rank / candidates`` is tested against Uniform(0, 1) by a one-sided Kolmogorov-Smirnov test (alternative: the
ranks are smaller). A small p says the model leaks even where no secret reaches the top 10. A canary ranked by
``trustml-audit canary --sample N`` (``EXPOSURE_SAMPLE`` in run_inversion.sh) has an estimated exposure rank (exact
whenever it may be in the top 10); the record keeps ``exposure_sampled = N`` (0: every candidate scored) and the
table marks a median with such estimates by ``~``.

Usage: ``python experiments/dp/summarize_inversion.py [--log LOG/inversion] [--write-readme]`` (without ``--log``
the table comes from the records file alone).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from result_records import load_records, merge_records, replace_readme_block
from scipy.stats import kstest

RECORDS = Path(__file__).resolve().parent / "results" / "inversion.jsonl"
BEGIN, END = "<!-- inversion-table:start -->", "<!-- inversion-table:end -->"
ARMS = {
    "none": "no defence (dropout 0)",
    "dropout": "dropout 0.3",
    "early_stopping": "early stopping (best val/acc epoch)",
    "dp_eps8": "DP-Adam, epsilon 8",
    "dp_eps1": "DP-Adam, epsilon 1",
}
MODELS = {"small": "small BERT", "minilm": "MiniLM fine-tuned"}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(log: Path) -> list[dict[str, Any]]:
    """One record per canary run whose attacks finished, from the run folders under ``log``."""
    records = []
    for run in sorted(log.glob("*/len*/*/reps*/*")):
        model, length, arm, reps = run.parts[-5], run.parts[-4], run.parts[-3], run.parts[-2]
        results = _read(run / "results.json")
        if not run.name.isdigit() or results is None:
            continue
        variants = [(arm, "")] + ([("early_stopping", "_best")] if arm == "none" else [])
        for name, suffix in variants:
            inverted = _read(run / f"invert{suffix}" / "inversion.json")
            exposed = _read(run / f"exposure{suffix}" / "canary.json")
            if inverted is None or exposed is None:
                continue
            records.append(
                {
                    "model": model,
                    "length": int(length[3:]),
                    "arm": name,
                    "repetitions": int(reps[4:]),
                    "canary": int(run.name),
                    "checkpoint": inverted["checkpoint"],
                    "test_acc": inverted["test_acc"],
                    "epsilon": results.get("epsilon", math.inf),
                    "secret": "".join(inverted["secret"]),
                    "recovered": "".join(inverted["recovered"]),
                    "inversion_rank": inverted["rank"],
                    "exposure_rank": exposed["rank"],
                    "exposure_sampled": 0 if exposed.get("exact", True) else exposed["num_sampled"],
                    "candidates": exposed["num_candidates"],
                }
            )
    return records


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def below_chance_p(ranks: list[int], candidates: int) -> float:
    """One-sided Kolmogorov-Smirnov p-value of ``rank / candidates`` against Uniform(0, 1), alternative: the secrets
    rank better (lower) than a uniformly drawn secret the model never saw."""
    return float(kstest([rank / candidates for rank in ranks], "uniform", alternative="greater").pvalue)


def cell_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, length, arm, repetitions), ordered as the README reads them."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault((r["model"], r["length"], r["arm"], r["repetitions"]), []).append(r)

    def order(key: tuple) -> tuple:
        model, length, arm, reps = key
        return (list(MODELS).index(model), length != 4, length, -reps, list(ARMS).index(arm))

    rows = []
    for key in sorted(cells, key=order):
        runs = cells[key]
        inv = [r["inversion_rank"] for r in runs]
        exp = [r["exposure_rank"] for r in runs]
        at10 = sum(rank <= 10 for rank in inv)
        rows.append(
            {
                "model": key[0],
                "length": key[1],
                "arm": key[2],
                "repetitions": key[3],
                "canaries": len(runs),
                "candidates": runs[0]["candidates"],
                "test_acc": statistics.mean(r["test_acc"] for r in runs),
                "epsilon": statistics.mean(r["epsilon"] for r in runs),
                "inv_at1": sum(rank == 1 for rank in inv),
                "inv_at10": at10,
                "inv_at10_ci": wilson(at10, len(runs)),
                "inv_median_rank": statistics.median(inv),
                "inv_chance_p": below_chance_p(inv, runs[0]["candidates"]),
                "exp_at1": sum(rank == 1 for rank in exp),
                "exp_at10": sum(rank <= 10 for rank in exp),
                "exp_median_rank": statistics.median(exp),
                "exp_estimated": sum(r.get("exposure_sampled", 0) > 0 for r in runs),
                "exp_chance_p": below_chance_p(exp, runs[0]["candidates"]),
                "secrets": [(r["secret"], r["recovered"]) for r in runs],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (success counts out of the cell's canaries)."""
    lines = [
        "| model | digits | training | repetitions | canaries | epsilon | test acc % | ModIvA success@1 "
        "| ModIvA success@10 (95% CI) | ModIvA median rank | ModIvA vs chance (p) | exposure ranks first "
        "| exposure top 10 | exposure median rank | exposure vs chance (p) | candidates |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["canaries"]
        low, high = r["inv_at10_ci"]
        exp_median = f"~{r['exp_median_rank']:.0f}" if r["exp_estimated"] else f"{r['exp_median_rank']:g}"
        lines.append(
            f"| {MODELS[r['model']]} | {r['length']} | {ARMS[r['arm']]} | {r['repetitions']} | {n} "
            f"| {r['epsilon']:.2f} | {100 * r['test_acc']:.1f} | {r['inv_at1']}/{n} "
            f"| {r['inv_at10']}/{n} ({100 * low:.0f}-{100 * high:.0f}%) | {r['inv_median_rank']:g} "
            f"| {r['inv_chance_p']:.1g} | {r['exp_at1']}/{n} | {r['exp_at10']}/{n} | {exp_median} "
            f"| {r['exp_chance_p']:.1g} | {r['candidates']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="LOG/inversion: add its runs to --records (same canary: replaced)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--write-readme", action="store_true", help="replace the table between the README markers")
    args = parser.parse_args()
    if args.log is not None:
        merge_records(args.records, collect(args.log), key=("model", "length", "arm", "repetitions", "canary"))
    rows = cell_rows(load_records(args.records))
    table = markdown(rows)
    print(table)
    for r in rows:
        pairs = " ".join(f"{s}/{g}" for s, g in r["secrets"])
        print(r["model"], r["length"], r["arm"], r["repetitions"], "secret/recovered:", pairs)
    if args.write_readme:
        replace_readme_block(BEGIN, END, table)


if __name__ == "__main__":
    main()
