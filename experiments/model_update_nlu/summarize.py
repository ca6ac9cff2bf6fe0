"""Tables of the MASSIVE add-data update from ``logs/seed*/{old,bcwi_plain,bcwi_fisher}/``: mean and std over seeds.

Rows: the old model, the untreated update (alpha 0 of the plain BCWI run), BCWI plain and BCWI Fisher at the
dev-chosen alpha. Verdict per BCWI variant: NFR <= 50% of the untreated update's and error <= +0.5 points.
Usage: ``.venv/bin/python experiments/model_update_nlu/summarize.py [LOG_DIR]``
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def main(log_dir: Path) -> None:
    rows: dict[str, dict[str, list[float]]] = {}
    seeds_of: dict[str, list[str]] = {}
    alphas: dict[str, list[float]] = {"bcwi_plain": [], "bcwi_fisher": []}
    seeds = []
    for seed_dir in sorted(log_dir.glob("seed*")):
        plain = seed_dir / "bcwi_plain" / "results.json"
        if not plain.is_file():
            continue
        seeds.append(seed_dir.name)
        r = json.loads(plain.read_text())
        untreated = {"er": 100 * (1 - r["test/new_acc"]), "nfr": 100 * r["test/new_nfr"]}
        er_old = 100 * r["test/er_old"]
        add = rows.setdefault
        for name, values in (
            ("old", {"er": er_old, "nfr": 0.0}),
            ("new (untreated)", untreated),
            ("bcwi plain", {"er": 100 * r["test/er_new"], "nfr": 100 * r["test/nfr"]}),
        ):
            for k, v in values.items():
                add(name, {}).setdefault(k, []).append(v)
            seeds_of.setdefault(name, []).append(seed_dir.name)
        alphas["bcwi_plain"].append(r["test/bcwi_alpha"])
        fisher = seed_dir / "bcwi_fisher" / "results.json"
        if fisher.is_file():
            f = json.loads(fisher.read_text())
            add("bcwi fisher", {}).setdefault("er", []).append(100 * f["test/er_new"])
            rows["bcwi fisher"].setdefault("nfr", []).append(100 * f["test/nfr"])
            seeds_of.setdefault("bcwi fisher", []).append(seed_dir.name)
            alphas["bcwi_fisher"].append(f["test/bcwi_alpha"])
    print(f"Seeds: {', '.join(seeds)} ({len(seeds)}); test split, 4,000 utterances; % mean ± std over seeds.\n")
    print("| model | runs | ER % | NFR % | NFR vs untreated | chosen alphas |")
    print("|---|---|---|---|---|---|")
    base = rows.get("new (untreated)", {})
    for name, values in rows.items():
        ratio = ""
        if base and name.startswith("bcwi") and seeds_of[name] == seeds_of["new (untreated)"]:
            ratio = f"{100 * (statistics.mean(values['nfr']) / statistics.mean(base['nfr']) - 1):+.0f}%"
        chosen = alphas.get(name.replace(" ", "_"), [])
        print(
            f"| {name} | {len(values['er'])} | {mean_std(values['er'])} | {mean_std(values['nfr'])} | {ratio} | "
            f"{', '.join(f'{a:g}' for a in chosen)} |"
        )
    print()
    for name in ("bcwi plain", "bcwi fisher"):
        if name not in rows or not base:
            continue
        # the untreated update of the same seeds
        same = [seeds_of["new (untreated)"].index(seed) for seed in seeds_of[name]]
        nfr, er = statistics.mean(rows[name]["nfr"]), statistics.mean(rows[name]["er"])
        base_nfr = statistics.mean(base["nfr"][i] for i in same)
        base_er = statistics.mean(base["er"][i] for i in same)
        met = nfr <= 0.5 * base_nfr and er <= base_er + 0.5
        print(
            f"- {name}: NFR {nfr:.2f}% vs {base_nfr:.2f}% ({100 * (nfr / base_nfr - 1):+.0f}%), error {er:.2f}% vs "
            f"{base_er:.2f}% ({er - base_er:+.2f} points), seeds {', '.join(seeds_of[name])}: "
            f"target {'met' if met else 'not met'}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "logs")
