"""Choose the distillation weight lambda of each PC variant on the VALIDATION split.

Usage: ``python experiments/pc_training/select_weight.py SWEEP_DIR...``: sweeps over
``+pc_variant=<variants> method.weight=<grid>`` and at least one with ``+pc_variant=untreated`` runs.
For every run the validation metrics come from ``metrics.csv`` at the epoch with the best validation
accuracy (the checkpoint that is tested); runs of several seeds are averaged per variant and weight. Per
variant the chosen weight has the lowest mean validation NFR among those whose mean validation error is at
most 0.5 points above untreated's mean (ties: lower error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from summarize import load_sweep

TOLERANCE = 0.005


def best_epoch_metrics(run_dir: Path) -> dict[str, float]:
    """Validation metrics of the epoch with the highest ``val/acc`` in ``run_dir/metrics.csv``."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    row = frame.loc[frame["val/acc"].idxmax()]
    return {"val_er_new": float(row["val/er_new"]), "val_nfr": float(row["val/nfr"])}


def main() -> None:
    runs = pd.concat([load_sweep(Path(d), "pc_variant", "method.weight") for d in sys.argv[1:]], ignore_index=True)
    runs = pd.concat([runs, pd.DataFrame([best_epoch_metrics(d) for d in runs["run_dir"]])], axis=1)
    print(runs[["pc_variant", "method.weight", "seed", "val_er_new", "val_nfr"]].to_string(index=False))
    limit = runs.loc[runs["pc_variant"] == "untreated", "val_er_new"].mean() + TOLERANCE
    candidates = runs[(runs["pc_variant"] != "untreated") & runs["method.weight"].notna()]
    means = candidates.groupby(["pc_variant", "method.weight"], as_index=False)[["val_er_new", "val_nfr"]].mean()
    print(means.to_string(index=False))
    for variant, group in means.groupby("pc_variant"):
        admissible = group[group["val_er_new"] <= limit]
        if admissible.empty:
            print(f"{variant}: no weight keeps the validation error within 0.5 points of untreated")
            continue
        chosen = admissible.sort_values(["val_nfr", "val_er_new"]).iloc[0]
        print(
            f"{variant}: weight={chosen['method.weight']} (val NFR {chosen['val_nfr']:.4f}, "
            f"ER {chosen['val_er_new']:.4f})"
        )


if __name__ == "__main__":
    main()
