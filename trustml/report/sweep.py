"""Sweep summaries: one row per job of a multirun (its overrides, status and final metrics)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trustml.atomic_files import write_bytes_atomic


def parse_override(override: str) -> tuple[str, str]:
    """``key=value`` (also ``+key=value``, ``group=option``) as ``(key, value)``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job directory below ``sweep_dir`` holding a ``run.json``, ordered by job number/name."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for run_json in sweep_dir.glob("*/run.json"):
        job_dir = run_json.parent
        record = json.loads(run_json.read_text())
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = (
            yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else record.get("overrides", [])
        )
        results_file = job_dir / "results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        jobs.append(
            {
                "job": job_dir.name,
                "overrides": dict(parse_override(o) for o in overrides or []),
                "seed": record.get("seed"),
                "status": record.get("status"),
                "results": results,
            }
        )
    return sorted(jobs, key=lambda j: (not j["job"].isdigit(), int(j["job"]) if j["job"].isdigit() else 0, j["job"]))


def sweep_table(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """Overrides vs final metrics, one row per job (the seed actually used is a column too)."""
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job["job"], **job["overrides"], "status": job["status"]}
        row.setdefault("seed", job["seed"])
        row.update(job["results"])
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (floats formatted with ``floatfmt``)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_summary(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` (overrides vs final metrics) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    frame = sweep_table(collect_runs(sweep_dir))
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    write_bytes_atomic(csv_path, frame.to_csv(index=False).encode())
    write_bytes_atomic(md_path, (f"# Sweep summary: {sweep_dir.name}\n\n" + markdown_table(frame)).encode())
    return csv_path, md_path


class SweepSummaryCallback(Callback):
    """Hydra callback: at the end of a multirun, write the sweep summary into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the summary; exit with status 2 when any job failed (after all jobs ran)."""
        csv_path, md_path = write_summary(config.hydra.sweep.dir)
        statuses = pd.read_csv(csv_path)["status"] if csv_path.stat().st_size > 1 else pd.Series(dtype=str)
        failed = int((statuses != "completed").sum())
        if failed:
            sys.stderr.write(f"trustml: error: {failed} of {len(statuses)} sweep jobs failed; see {md_path}\n")
            sys.exit(2)
