"""Accuracy-per-round curves (PNG) and the README table from ``results/<case>.jsonl`` (see run_grid.py).

For each case, partition and setting: final test accuracy and mean accuracy over all rounds (mean +- std
over seeds) for uniform and activity-based selection, the rounds each needs to reach 80% of the
centralized model's accuracy (mean over seeds; '-' when a seed never does), and the centralized reference.

Usage: ``python -m experiments.federated.report [--write-readme]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.federated.readme import write_readme_block  # noqa: E402

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
SELECTIONS = ("uniform", "activity")
SETTINGS = ("static", "continual")
#: "Caught up": a round whose test accuracy reaches this fraction of the centralized model's.
CATCH_UP = 0.8


def load(case: str) -> list[dict[str, Any]]:
    """The records of one case (empty when it was not run)."""
    path = HERE / "results" / f"{case}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def partition_label(options: dict[str, Any]) -> str:
    """A short name for a run's partition."""
    if options["partition"] == "dirichlet_label":
        return f"Dirichlet label skew alpha={options['dirichlet_alpha']:g}"
    return f"natural ({options['group_column']})"


def rounds_to_reach(curve: list[float], target: float) -> int | None:
    """First round (1-based) whose accuracy reaches ``target``."""
    hits = np.flatnonzero(np.asarray(curve) >= target)
    return int(hits[0]) + 1 if len(hits) else None


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def summarize(case: str, records: list[dict[str, Any]]) -> tuple[str, dict]:
    """Markdown table and the curves grouped as ``{(partition, setting): {selection: [curves]}}``."""
    central = {r["seed"]: r["test_acc"] for r in records if r["kind"] == "centralized"}
    curves: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    seeds_of: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for r in records:
        if r["kind"] != "federated":
            continue
        key = (partition_label(r["options"]), r["options"]["setting"])
        curves[key][r["options"]["selection"]].append(r["test_acc"])
        seeds_of[(*key, r["options"]["selection"])].append(r["seed"])
    first = next(r for r in records if r["kind"] == "federated")
    lines = [
        f"**{case}** — {first['num_devices']} devices, {len(first['test_acc'])} rounds; centralized reference "
        f"(same model, 15 epochs on all training data): **{mean_std(list(central.values()))}** test accuracy "
        f"over {len(central)} seeds.",
        "",
        "| partition | setting | final acc uniform | final acc activity | mean acc over rounds uniform | "
        f"mean acc over rounds activity | rounds to {CATCH_UP:.0%} of centralized (uniform / activity) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (partition, setting), by_selection in curves.items():
        cells = []
        for metric in ("final", "mean"):
            for selection in SELECTIONS:
                runs = by_selection.get(selection, [])
                values = [c[-1] if metric == "final" else float(np.mean(c)) for c in runs]
                cells.append(mean_std(values) if values else "-")
        reach = []
        for selection in SELECTIONS:
            seeds = seeds_of[(partition, setting, selection)]
            hits = [
                rounds_to_reach(c, CATCH_UP * central[s])
                for c, s in zip(by_selection.get(selection, []), seeds, strict=True)
            ]
            reach.append(f"{np.mean(hits):.1f}" if hits and None not in hits else "-")
        lines.append(f"| {partition} | {setting} | " + " | ".join(cells) + f" | {reach[0]} / {reach[1]} |")
    return "\n".join(lines), curves


def plot(case: str, curves: dict, central: float) -> Path:
    """One panel per (partition, setting): mean +- std accuracy per round for both selections."""
    keys = list(curves)
    partitions = list(dict.fromkeys(k[0] for k in keys))
    fig, axes = plt.subplots(len(partitions), 2, figsize=(10, 3.2 * len(partitions)), squeeze=False, sharey=True)
    for i, partition in enumerate(partitions):
        for j, setting in enumerate(SETTINGS):
            ax = axes[i][j]
            for selection, colour in zip(SELECTIONS, ("tab:blue", "tab:orange"), strict=True):
                runs = np.array(curves.get((partition, setting), {}).get(selection, []))
                if runs.size == 0:
                    continue
                x = np.arange(1, runs.shape[1] + 1)
                ax.plot(x, runs.mean(0), color=colour, label=selection)
                ax.fill_between(x, runs.mean(0) - runs.std(0), runs.mean(0) + runs.std(0), color=colour, alpha=0.2)
            ax.axhline(central, color="black", linestyle="--", linewidth=1, label="centralized")
            ax.set_title(f"{partition}, {setting}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = HERE / f"curves_{case}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    sections = []
    for case in ("digits", "topical_chat"):
        records = load(case)
        if not any(r["kind"] == "federated" for r in records):
            continue
        table, curves = summarize(case, records)
        central = float(np.mean([r["test_acc"] for r in records if r["kind"] == "centralized"]))
        path = plot(case, curves, central)
        sections.append(f"{table}\n\n![{case} accuracy per round]({path.name})")
    text = "\n\n".join(sections)
    print(text)
    if args.write_readme:
        write_readme_block(text, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
