"""The canary-inversion table of experiments/dp/README.md from the logs of run_inversion.sh.

For every (training arm, canary repetitions) cell: how many canaries (runs) it holds, the attacked checkpoint's
test accuracy, epsilon spent, and per attack the number of canaries whose secret ranks first and in the top 10
with the median rank: ModIvA (``trustml-audit invert``: rank under the attack's final distribution, no candidate
list) and the exposure ranking (``trustml-audit canary``: all 10,000 candidates scored by the classifier's loss).

Usage: ``python experiments/dp/summarize_inversion.py LOG_DIR/inversion [--write-readme]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

ARMS = {"nonprivate": "no defence (AdamW)", "dp_eps8": "DP-Adam, epsilon 8"}
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- inversion-table:start -->", "<!-- inversion-table:end -->"


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cell_rows(log: Path) -> list[dict[str, Any]]:
    """One row per (arm, repetitions) with at least one finished canary."""
    rows = []
    for arm, title in ARMS.items():
        for reps_dir in sorted((log / arm).glob("reps*"), key=lambda p: int(p.name[4:]), reverse=True):
            runs = []
            for canary in sorted(p for p in reps_dir.iterdir() if p.name.isdigit()):
                inverted = _read(canary / "invert" / "inversion.json")
                exposed = _read(canary / "exposure" / "canary.json")
                results = _read(canary / "results.json")  # the sweep job's run directory
                if inverted and exposed and results:
                    runs.append((inverted, exposed, results))
            if not runs:
                continue
            inv_ranks = [r[0]["rank"] for r in runs]
            exp_ranks = [r[1]["rank"] for r in runs]
            rows.append(
                {
                    "arm": title,
                    "repetitions": int(reps_dir.name[4:]),
                    "canaries": len(runs),
                    "test_acc": statistics.mean(r[0]["test_acc"] for r in runs),
                    "epsilon": statistics.mean(r[2].get("epsilon", math.inf) for r in runs),
                    "inv_at1": sum(r[0]["success@1"] for r in runs),
                    "inv_at10": sum(r[0]["success@10"] for r in runs),
                    "inv_median_rank": statistics.median(inv_ranks),
                    "exp_at1": sum(rank == 1 for rank in exp_ranks),
                    "exp_at10": sum(rank <= 10 for rank in exp_ranks),
                    "exp_median_rank": statistics.median(exp_ranks),
                    "secrets": [("".join(r[0]["secret"]), "".join(r[0]["recovered"])) for r in runs],
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (success counts out of the cell's canaries)."""
    lines = [
        "| training | canary repetitions | canaries | epsilon | test acc % | ModIvA success@1 | ModIvA success@10 "
        "| ModIvA median rank | exposure ranks first | exposure top 10 | exposure median rank |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["canaries"]
        lines.append(
            f"| {r['arm']} | {r['repetitions']} | {n} | {r['epsilon']:.2f} | {100 * r['test_acc']:.1f} "
            f"| {r['inv_at1']}/{n} | {r['inv_at10']}/{n} | {r['inv_median_rank']:g} | {r['exp_at1']}/{n} "
            f"| {r['exp_at10']}/{n} | {r['exp_median_rank']:g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the inversion log directory (LOG/inversion)")
    parser.add_argument("--write-readme", action="store_true", help="replace the table between the README markers")
    args = parser.parse_args()
    rows = cell_rows(args.log)
    table = markdown(rows)
    print(table)
    for r in rows:
        print(r["arm"], r["repetitions"], "secret/recovered:", " ".join(f"{s}/{g}" for s, g in r["secrets"]))
    if args.write_readme:
        text = README.read_text()
        head, rest = text.split(BEGIN, 1)
        README.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
