"""Choose each PC variant's setting (lambda, and where swept tau / alpha / beta) on the VALIDATION split.

Usage: ``python experiments/pc_training/select_weight.py SWEEP_DIR...``: sweeps over
``+pc_variant=<variants> method.weight=<grid>`` (optionally also ``method.temperature``, ``method.alpha``,
``method.beta``) and at least one with ``+pc_variant=untreated`` runs. For every run the validation metrics
come from ``metrics.csv`` at the epoch with the best validation accuracy (the checkpoint that is tested); runs
of several seeds are averaged per variant and setting. Two rules, both printed per variant:

* ``target`` (the one used): the issue's target restated on validation — among the settings whose mean
  validation NFR is at most half of untreated's, the lowest mean validation error (ties: lower NFR);
* ``tolerance`` (the first rule, kept for comparison): the lowest mean validation NFR among the settings whose
  mean validation error is at most 0.5 points above untreated's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from summarize import load_sweep

TOLERANCE = 0.005
NFR_CUT = 0.5
SETTING = ("method.weight", "method.temperature", "method.alpha", "method.beta")


def best_epoch_metrics(run_dir: Path) -> dict[str, float]:
    """Validation metrics of the epoch with the highest ``val/acc`` in ``run_dir/metrics.csv``."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    row = frame.loc[frame["val/acc"].idxmax()]
    return {"val_er_new": float(row["val/er_new"]), "val_nfr": float(row["val/nfr"])}


def describe(row: pd.Series) -> str:
    """``weight=0.3 temperature=2`` for the swept options of a setting (the variant file's value elsewhere)."""
    return " ".join(f"{key.removeprefix('method.')}={row[key]}" for key in SETTING if row[key] != "-")


def choose(means: pd.DataFrame, untreated: pd.Series) -> dict[str, pd.Series | None]:
    """The setting each rule picks among ``means`` (one variant's settings) given untreated's mean metrics."""
    by_target = means[means["val_nfr"] <= NFR_CUT * untreated["val_nfr"]].sort_values(["val_er_new", "val_nfr"])
    by_tolerance = means[means["val_er_new"] <= untreated["val_er_new"] + TOLERANCE].sort_values(
        ["val_nfr", "val_er_new"]
    )
    return {
        "target": None if by_target.empty else by_target.iloc[0],
        "tolerance": None if by_tolerance.empty else by_tolerance.iloc[0],
    }


def main() -> None:
    runs = pd.concat([load_sweep(Path(d), "pc_variant", *SETTING) for d in sys.argv[1:]], ignore_index=True)
    runs = pd.concat([runs, pd.DataFrame([best_epoch_metrics(d) for d in runs["run_dir"]])], axis=1)
    runs[list(SETTING)] = runs[list(SETTING)].fillna("-")
    untreated = runs.loc[runs["pc_variant"] == "untreated", ["val_er_new", "val_nfr"]].mean()
    print(f"untreated: val ER {untreated['val_er_new']:.4f}, val NFR {untreated['val_nfr']:.4f}")
    candidates = runs[(runs["pc_variant"] != "untreated") & (runs["method.weight"] != "-")]
    means = candidates.groupby(["pc_variant", *SETTING], as_index=False)[["val_er_new", "val_nfr"]].mean()
    means["runs"] = candidates.groupby(["pc_variant", *SETTING]).size().to_numpy()
    print(means.to_string(index=False))
    for variant, group in means.groupby("pc_variant"):
        for rule, chosen in choose(group, untreated).items():
            if chosen is None:
                print(f"{variant} [{rule}]: no setting qualifies")
            else:
                print(
                    f"{variant} [{rule}]: {describe(chosen)} (val NFR {chosen['val_nfr']:.4f}, "
                    f"ER {chosen['val_er_new']:.4f})"
                )


if __name__ == "__main__":
    main()
