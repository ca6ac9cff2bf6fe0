"""Markdown + PNG reports of a run directory or a sweep directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import pandas as pd  # noqa: E402

from trustml.atomic_files import write_bytes_atomic  # noqa: E402
from trustml.errors import TrustMLError  # noqa: E402
from trustml.report.sweep import collect_runs, markdown_table, sweep_table, write_summary  # noqa: E402


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _run_report(run_dir: Path, out: Path) -> list[str]:
    record = json.loads((run_dir / "run.json").read_text())
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- status: **{record.get('status')}**",
        f"- seed: {record.get('seed')}",
    ]
    git = record.get("git") or {}
    lines.append(f"- git commit: {git.get('commit')} (dirty: {git.get('dirty')})")
    lines.append(f"- overrides: `{' '.join(record.get('overrides', [])) or '(none)'}`")
    if record.get("error"):
        lines.append(f"- error: {record['error']['type']}: {record['error']['message']}")
    results_file = run_dir / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        lines += [
            "",
            "## Final metrics",
            "",
            markdown_table(pd.DataFrame({"metric": list(results), "value": list(results.values())})),
        ]
    metrics_file = run_dir / "metrics.csv"
    if metrics_file.is_file():
        frame = pd.read_csv(metrics_file)
        lines += ["## Curves", ""]
        by_name: dict[str, list[str]] = {}
        for column in frame.columns:
            if column == "epoch":
                continue
            by_name.setdefault(column.split("/")[-1], []).append(column)
        for name, columns in by_name.items():
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for column in columns:
                ax.plot(frame["epoch"], frame[column], marker="o", label=column)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.legend()
            fig.tight_layout()
            png = f"curve_{_slug(name)}.png"
            fig.savefig(out / png, dpi=100)
            plt.close(fig)
            lines.append(f"![{name}]({png})")
    return lines


def _numeric_where_possible(frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError):
            continue
    return frame


def _curves_over_jobs(sweep_dir: Path, frame: pd.DataFrame, params: list[str], out: Path) -> list[str]:
    """Per-epoch curves of every metric, mean and std over the jobs that share the swept parameters."""
    curves = []
    for job in frame.to_dict("records"):
        metrics_file = sweep_dir / str(job["job"]) / "metrics.csv"
        if metrics_file.is_file():
            curve = pd.read_csv(metrics_file)
            curve["config"] = ", ".join(f"{p}={job[p]}" for p in params) if params else "all jobs"
            curves.append(curve)
    if not curves:
        return []
    data = pd.concat(curves, ignore_index=True)
    lines = ["## Learning curves (mean and std over seeds)", ""]
    for metric in [c for c in data.columns if c not in ("epoch", "config")]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for config, group in data.groupby("config"):
            stats = group.groupby("epoch")[metric].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], marker="o", label=config)
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        png = f"curve_{_slug(metric)}.png"
        fig.savefig(out / png, dpi=100)
        plt.close(fig)
        lines.append(f"![{metric}]({png})")
    return [*lines, ""]


def _sweep_report(sweep_dir: Path, out: Path) -> list[str]:
    write_summary(sweep_dir)
    jobs = collect_runs(sweep_dir)
    frame = _numeric_where_possible(sweep_table(jobs))
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(frame)} jobs.",
        "",
        "## All jobs",
        "",
        markdown_table(frame),
    ]
    completed = frame[frame["status"] == "completed"]
    metrics = list(dict.fromkeys(k for job in jobs for k in job["results"] if k in completed.columns))
    metrics = [m for m in metrics if pd.api.types.is_numeric_dtype(completed[m])]
    override_keys = dict.fromkeys(k for job in jobs for k in job["overrides"] if k != "seed")
    params = [k for k in override_keys if completed[k].nunique(dropna=True) > 1]
    lines += _curves_over_jobs(sweep_dir, completed, params, out)
    if not params:
        stats = completed[metrics].agg(["mean", "std"]).T.reset_index().rename(columns={"index": "metric"})
        lines += ["## Mean and std over seeds", "", markdown_table(stats)]
        return lines
    lines += ["## Metrics against swept parameters (mean and std over seeds)", ""]
    for param in params:
        grouped = completed.groupby(param)[metrics].agg(["mean", "std"])
        table = pd.DataFrame({param: grouped.index.astype(str)})
        for metric in metrics:
            table[f"{metric} mean"] = grouped[(metric, "mean")].to_numpy()
            table[f"{metric} std"] = grouped[(metric, "std")].to_numpy()
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.errorbar(
                grouped.index.astype(str),
                grouped[(metric, "mean")],
                yerr=grouped[(metric, "std")].fillna(0.0),
                marker="o",
                capsize=4,
            )
            ax.set_xlabel(param)
            ax.set_ylabel(metric)
            fig.tight_layout()
            png = f"{_slug(metric)}_vs_{_slug(param)}.png"
            fig.savefig(out / png, dpi=100)
            plt.close(fig)
            lines.append(f"![{metric} vs {param}]({png})")
        lines += ["", markdown_table(table)]
    return lines


def render_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` (and PNG plots) for a run or sweep directory; return the Markdown path.

    A run gets its provenance, final metrics and one curve per metric over epochs. A sweep gets its summary
    table and, for each swept parameter, each metric's mean and std over the other swept values (seeds).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TrustMLError(f"{directory} is not a directory; give a run or sweep directory (e.g. logs/multiruns/...)")
    out_dir = Path(out) if out else directory
    out_dir.mkdir(parents=True, exist_ok=True)
    if (directory / "run.json").is_file():
        lines = _run_report(directory, out_dir)
    elif any(directory.glob("*/run.json")):
        lines = _sweep_report(directory, out_dir)
    else:
        raise TrustMLError(f"{directory} holds no run.json and no job folders with one: not a trustml run or sweep")
    path = out_dir / "report.md"
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    return path
