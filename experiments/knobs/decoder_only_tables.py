"""Tables of the decoder-only Topical-Chat sweep (``decoder_only_study.sh sweep``) for experiments/knobs/README.md.

Reads every ``results.json`` under ``--sweep``/``<knob>/`` (``runs/*`` and ``multiruns/*/*``), takes the knob value
from the job's Hydra overrides, prints one markdown table per knob, and writes ``results.json`` (every job's
metrics and overrides) and ``generations_sample.jsonl`` (the first ``--samples`` outputs of every job beside the
neutral outputs) into ``--out``. Usage: ``python experiments/knobs/decoder_only_tables.py --sweep /tmp/knobs_do/sweep
--out experiments/knobs/logs_decoder_only``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

KNOB_OPTIONS = {
    "A": "method.knobs.prompt_attention.values.knowledge",
    "C": "method.knobs.prompt_attention.values.control",
    "D": "method.knobs.self_attention.values.current",
    "B": "method.knobs.mixing_weight",
}
TITLES = {
    "neutral": "no knob (neutral)",
    "A": "A: prompt-attention bias on the knowledge span (`method.knobs.prompt_attention.values.knowledge`)",
    "C": "C: soft prompt of ten questions (`method.control_phrases_file=sample:questions`), bias on it "
    "(`method.knobs.prompt_attention.values.control`)",
    "D": "D: self-attention bias on the current position (`method.knobs.self_attention.values.current`)",
    "B": "B: mixing with the knowledge-copy LM (`method.knobs.mixing_weight`, probability space)",
}
COLUMNS = (
    "knowledge_f1",
    "reference_f1",
    "question_ratio",
    "distinct_1",
    "distinct_2",
    "reference_perplexity",
    "length",
    "paired_changed",
    "paired_knowledge_f1_higher",
    "paired_knowledge_f1_lower",
    "paired_question_higher",
    "paired_question_lower",
)


def jobs(sweep: Path) -> list[Path]:
    """Run directories of one knob's sweep (single runs and multirun jobs) that hold a ``results.json``."""
    found = [*sweep.glob("runs/*/results.json"), *sweep.glob("multiruns/*/*/results.json")]
    return sorted(p.parent for p in found)


def job_record(job: Path, knob: str) -> dict[str, Any]:
    """Knob value, overrides and ``test/`` metrics of one job."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    options = dict(o.lstrip("+").split("=", 1) for o in overrides)
    results = json.loads((job / "results.json").read_text())
    value = float(options.get(KNOB_OPTIONS.get(knob, ""), 1.0))
    metrics = {k[len("test/") :]: v for k, v in results.items() if k.startswith("test/")}
    return {"knob": knob, "value": value, "run_dir": str(job), "overrides": overrides, "metrics": metrics}


def main() -> None:
    """Print the tables and write the logs (module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("/tmp/knobs_do/sweep"))
    parser.add_argument("--out", type=Path, default=Path("experiments/knobs/logs_decoder_only"))
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    records, samples = [], []
    for knob in ("neutral", "A", "C", "D", "B"):
        found = [job_record(j, knob) for j in jobs(args.sweep / knob)]
        if not found:
            continue
        found.sort(key=lambda r: r["value"])
        records += found
        print(f"\n**{TITLES[knob]}**\n")
        print("| value | " + " | ".join(COLUMNS) + " |")
        print("|---:|" + "---:|" * len(COLUMNS))
        for r in found:
            cells = [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "-" for c in COLUMNS]
            print(f"| {r['value']:g} | " + " | ".join(cells) + " |")
            rows = (Path(r["run_dir"]) / "generations.jsonl").read_text().splitlines()[: args.samples]
            for line in rows:
                row = json.loads(line)
                samples.append(
                    {
                        "knob": knob,
                        "value": r["value"],
                        "id": row["id"],
                        "history": row["segments"]["history"],
                        "reference": row["reference"],
                        "output": row["output"],
                        "neutral_output": row["neutral_output"],
                    }
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    (args.out / "generations_sample.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


if __name__ == "__main__":
    main()
