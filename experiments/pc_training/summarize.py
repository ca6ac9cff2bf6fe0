"""Collect the runs of the pc_training sweeps into mean +- std tables and write them into README.md.

Usage: ``python experiments/pc_training/summarize.py [LOG_DIR]`` (default: ``experiments/pc_training/logs``).
Each ``<LOG_DIR>/<dataset>/new`` sweep gives one positive-congruent table (rows: variants); each
``<LOG_DIR>/<dataset>/bct`` sweep one compatibility table (rows: influence weights). The tables replace the
text between ``<!-- BEGIN <dataset> -->`` / ``<!-- END <dataset> -->`` (and ``... <dataset>-bct ...``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
VARIANTS = ("untreated", "naive", "distill", "fd_kl", "fd_lm", "ldi")
PC_COLUMNS = {
    "test/er_old": ("ER_old %", 100.0),
    "test/er_new": ("ER_new %", 100.0),
    "test/nfr": ("NFR %", 100.0),
    "test/relative_nfr": ("rel. NFR", 1.0),
    "test/pfr": ("PFR %", 100.0),
    "time_per_epoch_s": ("epoch s", 1.0),
}
BCT_COLUMNS = {
    "test/retrieval_old_old": ("old/old %", 100.0),
    "test/retrieval_new_old": ("new/old %", 100.0),
    "test/retrieval_new_new": ("new/new %", 100.0),
    "test/compatible": ("compatible (runs)", None),
    "test/old_head_acc_old": ("old head on old %", 100.0),
    "test/old_head_acc_new": ("old head on new %", 100.0),
    "test/er_new": ("ER_new %", 100.0),
}


def override(overrides: list[str], key: str) -> str | None:
    """The value of ``key=value`` (or ``+key=value``) among a run's Hydra overrides, without a folder prefix.

    ``+pc_variant=digits/fd_kl`` gives ``fd_kl``: data-set specific variants share the variant's row.
    """
    for item in overrides:
        name, _, value = item.lstrip("+").partition("=")
        if name == key:
            return value.rpartition("/")[2]
    return None


def load_sweep(sweep_dir: Path, *keys: str) -> pd.DataFrame:
    """One row per completed run of a sweep: its directory, the swept ``keys``, the seed, the final metrics."""
    rows = []
    for run_json in sorted(sweep_dir.glob("*/run.json")):
        record = json.loads(run_json.read_text())
        results_path = run_json.parent / "results.json"
        if record.get("status") != "completed" or not results_path.is_file():
            continue
        results = json.loads(results_path.read_text())
        if "test/er_new" not in results and "test/acc" in results:
            results["test/er_new"] = 1.0 - results["test/acc"]
        swept = {key: override(record["overrides"], key) for key in keys}
        rows.append({"run_dir": run_json.parent, **swept, "seed": record["seed"], **results})
    return pd.DataFrame(rows)


def mean_std_table(frame: pd.DataFrame, key: str, columns: dict, order: list[str]) -> str:
    """A markdown table of ``mean +- std`` (over seeds) per value of ``key``."""
    header = [key, "runs", *(label for label, _ in columns.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for value in order:
        group = frame[frame[key] == value]
        if group.empty:
            continue
        cells = [value, str(len(group))]
        for metric, (_, scale) in columns.items():
            if metric not in group:
                cells.append("-")
            elif scale is None:
                cells.append(f"{int(group[metric].sum())}/{len(group)}")
            else:
                values = group[metric] * scale
                cells.append(f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, name: str, table: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``table``."""
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- BEGIN {name} --> / <!-- END {name} --> markers")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def main() -> None:
    log_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "logs"
    readme = HERE / "README.md"
    text = readme.read_text()
    for dataset_dir in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        dataset = dataset_dir.name
        if (dataset_dir / "new").is_dir():
            frame = load_sweep(dataset_dir / "new", "pc_variant")
            table = mean_std_table(frame, "pc_variant", PC_COLUMNS, list(VARIANTS))
            print(f"## {dataset}\n{table}\n")
            text = replace_block(text, dataset, table)
        if (dataset_dir / "bct").is_dir():
            frame = load_sweep(dataset_dir / "bct", "method.influence_weight")
            order = sorted(frame["method.influence_weight"].dropna().unique(), key=float)
            table = mean_std_table(frame, "method.influence_weight", BCT_COLUMNS, order)
            print(f"## {dataset} BCT\n{table}\n")
            text = replace_block(text, f"{dataset}-bct", table)
    readme.write_text(text)


if __name__ == "__main__":
    main()
