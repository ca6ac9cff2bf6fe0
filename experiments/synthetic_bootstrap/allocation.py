"""Issue 19, item 5: entropy-based allocation vs borrowing the golden distribution, paired over seeds.

Protocol (fixed before any run of this script):

* data: SNIPS, the three intents of ``run.py``; per seed the 50 golden utterances per intent of
  ``train_<Intent>.json`` that ``run.py`` draws (``golden_and_dev``); test: the ``validate_<Intent>.json`` files;
* arms: ``run.py``'s conditions "d entropy allocation" (the budget split over golden patterns by their entropy)
  and "d borrow allocation" (split by the golden patterns' frequency), both with guided resampling, no
  catalogs, induction prior weight 1.5 (the CLI's default; not tuned here), budgets 200, 500 and 1,000
  synthetic utterances per intent, seeds 0-4 (one golden draw, grammar and sample per seed and budget, the
  same golden set for both arms: the comparison is paired by seed);
* evaluation models (``trustml.synth.nlu_eval``, 400 steps of 32, the same for both arms): ``frozen`` (MiniLM
  frozen, heads only, lr 2e-3) and ``last2`` (MiniLM's last two blocks trained too, at ``encoder_lr`` 1e-4;
  heads at 2e-3), since a frozen encoder may hide what the data changes;
* reported: slot F1 and intent accuracy on the validate files, mean ± std per arm, and the paired difference
  entropy - borrow per seed: its mean, std and 95% t-interval over the seeds (n - 1 degrees of freedom).
  Verdict per (encoder, budget): "entropy better" when the interval lies above 0, "borrow better" below 0,
  otherwise "not distinguishable".

Each (encoder, budget, seed) appends its two runs to ``--out`` (JSON lines) and is skipped when there, so the
grid resumes and splits over processes (``--encoders/--budgets/--seeds``). ``--report`` writes the table between
README.md's allocation section (``run.py``'s template, re-rendered from ``results.json``).

    OMP_NUM_THREADS=1 python experiments/synthetic_bootstrap/allocation.py --snips ../shared/data/snips
    python experiments/synthetic_bootstrap/allocation.py --report   # README.md re-rendered with the table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from run import HERE, golden_and_dev, load_snips
from scipy import stats

from trustml.synth.induction import InductionConfig
from trustml.synth.nlu_eval import Labels, NluTrainingConfig, evaluate, train
from trustml.synth.synthesis import SynthesisConfig, synthesize

ARMS = {"entropy": "d entropy allocation", "borrow": "d borrow allocation"}
ENCODERS = {"frozen": {}, "last2": {"trainable_last_layers": 2, "encoder_lr": 1e-4}}
BUDGETS = (200, 500, 1000)
SEEDS = (0, 1, 2, 3, 4)
PRIOR_WEIGHT = 1.5
GOLDEN_PER_INTENT = 50


def training_set(golden: list, allocation: str, budget: int, seed: int) -> list:
    """Golden plus ``budget`` synthetic utterances per intent allocated by ``allocation``, with resampling."""
    config = SynthesisConfig(
        induction=InductionConfig(seed=seed, prior_weight=PRIOR_WEIGHT),
        budget_per_intent=budget,
        allocation=allocation,
        resampling=True,
        catalog_match="name",
        seed=seed,
    )
    return synthesize(golden, {}, config).dataset


def run_cell(snips: Path, encoder: str, budget: int, seed: int, steps: int) -> list[dict[str, Any]]:
    """Both arms of one (encoder, budget, seed) cell, trained and scored on the validate files."""
    train_files, _, test = load_snips(snips)
    golden, _ = golden_and_dev(train_files, GOLDEN_PER_INTENT, 0, seed)  # run.py's golden draw (no dev split here)
    config = NluTrainingConfig(steps=steps, seed=seed, **ENCODERS[encoder])
    rows = []
    for arm in ARMS:
        start = time.perf_counter()
        data = training_set(golden, arm, budget, seed)
        nlu = train(data, config, labels=Labels.of(data))
        scores = evaluate(nlu, test)
        rows.append(
            {
                "encoder": encoder,
                "budget": budget,
                "seed": seed,
                "arm": arm,
                "train_size": len(data),
                "seconds": time.perf_counter() - start,
                **scores,
            }
        )
    return rows


def paired(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Per-arm mean/std of ``metric`` and the paired difference entropy - borrow over the seeds both arms ran."""
    by_arm = {arm: {r["seed"]: r[metric] for r in rows if r["arm"] == arm} for arm in ARMS}
    seeds = sorted(set(by_arm["entropy"]) & set(by_arm["borrow"]))
    diffs = [by_arm["entropy"][s] - by_arm["borrow"][s] for s in seeds]
    out: dict[str, Any] = {"seeds": seeds, "diffs": diffs}
    for arm, values in by_arm.items():
        picked = [values[s] for s in seeds]
        out[arm] = (statistics.mean(picked), statistics.stdev(picked)) if len(picked) > 1 else (picked[0], 0.0)
    if len(diffs) > 1:
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / len(diffs) ** 0.5
        out["diff"], out["ci"] = (mean, std), (mean - half, mean + half)
        out["verdict"] = (
            "entropy better" if mean - half > 0 else "borrow better" if mean + half < 0 else "not distinguishable"
        )
    return out


def report(records: list[dict[str, Any]]) -> str:
    """The markdown table of every (encoder, budget) cell with both arms on at least one seed."""
    lines = [
        "| encoder | budget per intent | seeds | slot F1 % entropy | slot F1 % borrow | slot F1 entropy - borrow "
        "(mean ± std) | 95% CI | verdict | intent acc % entropy | intent acc % borrow |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for encoder in ENCODERS:
        for budget in BUDGETS:
            rows = [r for r in records if r["encoder"] == encoder and r["budget"] == budget]
            if not rows:
                continue
            slot, intent = paired(rows, "slot_f1"), paired(rows, "intent_accuracy")
            if not slot["seeds"]:
                continue
            diff = f"{100 * slot['diff'][0]:+.2f} ± {100 * slot['diff'][1]:.2f}" if "diff" in slot else "one seed"
            ci = f"[{100 * slot['ci'][0]:+.2f}, {100 * slot['ci'][1]:+.2f}]" if "ci" in slot else ""
            lines.append(
                f"| {encoder} | {budget} | {len(slot['seeds'])} | {100 * slot['entropy'][0]:.1f} ± "
                f"{100 * slot['entropy'][1]:.1f} | {100 * slot['borrow'][0]:.1f} ± {100 * slot['borrow'][1]:.1f} | "
                f"{diff} | {ci} | {slot.get('verdict', 'needs 2+ seeds')} | {100 * intent['entropy'][0]:.1f} | "
                f"{100 * intent['borrow'][0]:.1f} |"
            )
    return "\n".join(lines)


def read(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in ``path`` (JSON lines; none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snips", type=Path, default=HERE.parents[2] / "shared" / "data" / "snips")
    parser.add_argument("--out", type=Path, default=HERE / "results_allocation.jsonl")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--report", action="store_true", help="write the table into README.md, run nothing")
    args = parser.parse_args()
    if args.report:
        from run import render_readme

        print(report(read(args.out)))
        (HERE / "README.md").write_text(
            render_readme(json.loads((HERE / "results.json").read_text())), encoding="utf-8"
        )
        return
    if not args.snips.is_dir():
        raise SystemExit(f"SNIPS data not found: {args.snips} (../shared/data/snips)")
    torch.set_num_threads(1)
    for encoder in args.encoders:
        for budget in args.budgets:
            for seed in args.seeds:
                # read again before every cell: another process may have recorded it meanwhile
                if (encoder, budget, seed) in {(r["encoder"], r["budget"], r["seed"]) for r in read(args.out)}:
                    continue
                rows = run_cell(args.snips, encoder, budget, seed, args.steps)
                with args.out.open("a") as f:  # both arms of a cell at once: a cell is never half-recorded
                    f.write("".join(json.dumps(r) + "\n" for r in rows))
                print(encoder, budget, seed, [(r["arm"], round(r["slot_f1"], 4)) for r in rows], flush=True)


if __name__ == "__main__":
    main()
