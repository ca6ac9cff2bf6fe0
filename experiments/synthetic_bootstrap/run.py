"""Synthetic bootstrap on SNIPS: does data generated from 50 golden utterances per intent help NLU?

Conditions (per seed, golden = 50 utterances per intent of train_<Intent>.json drawn with the seed):
  a   golden only
  b   golden + grammar samples (Bayesian model merging, the grammar's own distribution)
  c   b + guided resampling (Jaccard-allowed slot value swaps across intents)
  d   c with the budget split over golden patterns by complexity (entropy) / by golden frequency (borrow)
  +cat  the same with catalogs extending the slot classes by name: catalog ``<slot>`` = the distinct values
      of ``<slot>`` in every SNIPS training utterance (train_<Intent>.json and train_<Intent>_full.json)
      except the golden ones -- values only, no sentences, nothing from the validate files; "small catalogs":
      the same from train_<Intent>.json alone (its 900 - 150 = 750 non-golden utterances)
  e   the full training set (train_<Intent>_full.json), the upper bound
Model: frozen MiniLM (all-MiniLM-L6-v2) with a trained intent head and BiGRU slot tagger
(trustml.synth.nlu_eval), the same recipe for every condition, evaluated on validate_<Intent>.json
(intent accuracy, CoNLL slot F1). Also measures the issue's speed targets (induction on 60 golden
utterances, 100k samples).

    python experiments/synthetic_bootstrap/run.py --snips ../shared/data/snips --seeds 0 1 2

Seeds can run in separate processes (``--out results_seed<k>.json``) and be merged with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trustml.synth.catalog import Catalogs
from trustml.synth.formats import load_utterances
from trustml.synth.fst import GrammarFst
from trustml.synth.induction import InductionConfig, induce_grammar
from trustml.synth.nlu_eval import Labels, NluTrainingConfig, evaluate, train
from trustml.synth.synthesis import SynthesisConfig, select_golden, synthesize

INTENTS = ("PlayMusic", "GetWeather", "BookRestaurant")
HERE = Path(__file__).resolve().parent


def speed_benchmark(snips: Path, repeats: int = 3) -> dict[str, float]:
    """Induction time on 60 golden PlayMusic utterances (median of ``repeats``), grammar size, 100k samples."""
    golden = select_golden(load_utterances(snips / "train_PlayMusic.json"), 60, seed=0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        grammar, _ = induce_grammar(golden, InductionConfig())
        times.append(time.perf_counter() - t)
    fst = GrammarFst(grammar)
    t = time.perf_counter()
    samples = fst["PlayMusic"].sample(100_000, seed=0)
    sample_s = time.perf_counter() - t
    stats = grammar.stats()["total"]
    return {
        "induction_s": statistics.median(times),
        "rules": stats["rules"],
        "structural_rules": stats["structural_rules"],
        "unique_sentences": fst.count()["PlayMusic"],
        "sample_100k_s": sample_s,
        "unique_in_100k": len({u.text for u in samples}),
    }


def catalog_values(utterances, golden) -> Catalogs:
    """One catalog per slot name: the distinct values of that slot in ``utterances`` other than ``golden``."""
    skip = {(u.intent, u.text) for u in golden}
    values: dict[str, dict[str, None]] = {}
    for u in utterances:
        if (u.intent, u.text) not in skip:
            for slot, value in u.slot_values():
                values.setdefault(slot, {})[value] = None
    return {slot: tuple(vals) for slot, vals in values.items()}


def value_coverage(test, golden, catalogs: Catalogs) -> dict[str, float]:
    """Share of the slot values in ``test`` (occurrences, case-folded) that the golden utterances' values of the
    same slot cover, and that golden values plus the catalog of that slot cover."""
    known: dict[str, set[str]] = {}
    for u in golden:
        for slot, value in u.slot_values():
            known.setdefault(slot, set()).add(value.casefold())
    extended = {slot: known.get(slot, set()) | {v.casefold() for v in values} for slot, values in catalogs.items()}
    pairs = [(slot, value.casefold()) for u in test for slot, value in u.slot_values()]
    return {
        "golden": sum(v in known.get(s, ()) for s, v in pairs) / len(pairs),
        "catalogs": sum(v in extended.get(s, known.get(s, ())) for s, v in pairs) / len(pairs),
    }


CONDITIONS = (
    "a golden",
    "b + grammar",
    "c + resampling",
    "d entropy allocation",
    "d borrow allocation",
    "b+cat grammar + catalogs",
    "c+cat resampling + catalogs",
    "d+cat entropy + catalogs",
    "d+cat borrow + catalogs",
    "c+cat resampling + catalogs, 3x budget",
    "c+cat resampling + small catalogs",
    "e full training set",
)


def conditions(golden, catalogs: Catalogs, small: Catalogs, full, budget: int, seed: int) -> dict[str, Callable]:
    """For each name of :data:`CONDITIONS`, a function that builds its training set for one seed."""
    induction = InductionConfig(seed=seed)

    def synth(allocation: str, resampling: bool, cats: Catalogs | None = None, scale: int = 1) -> Callable:
        config = SynthesisConfig(
            induction=induction,
            budget_per_intent=scale * budget,
            allocation=allocation,
            resampling=resampling,
            catalog_match="name",
            seed=seed,
        )
        return lambda: synthesize(golden, cats or {}, config).dataset

    makers = (
        lambda: list(golden),
        synth("grammar", False),
        synth("grammar", True),
        synth("entropy", True),
        synth("borrow", True),
        synth("grammar", False, catalogs),
        synth("grammar", True, catalogs),
        synth("entropy", True, catalogs),
        synth("borrow", True, catalogs),
        synth("grammar", True, catalogs, scale=3),
        synth("grammar", True, small),
        lambda: list(full),
    )
    return dict(zip(CONDITIONS, makers, strict=True))


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def render_readme(record: dict) -> str:
    """README.md: the claim, the exact commands, the speed targets, the value coverage and the accuracy table."""
    speed, results, coverage = record["speed"], record["results"], record["coverage"]
    command = "\n    ".join(record["commands"])
    results = {name: results[name] for name in sorted(results, key=CONDITIONS.index)}
    slot = {name: statistics.mean(r["slot_f1"] for r in rows) for name, rows in results.items()}
    low, high = slot.get("a golden", 0.0), slot.get("e full training set", 1.0)
    rows = []
    for name, runs in results.items():
        closed = (slot[name] - low) / (high - low) if high != low else 0.0
        size = statistics.mean(r["train_size"] for r in runs)
        rows.append(
            f"| {name} | {size:.0f} | {_mean_std([r['intent_accuracy'] for r in runs])} | "
            f"{_mean_std([r['slot_f1'] for r in runs])} | {100 * closed:.0f}% |"
        )
    synthetic = {n: v for n, v in slot.items() if n[0] in "cd"}
    with_cat = {n: v for n, v in synthetic.items() if "+cat" in n}
    without = {n: v for n, v in synthetic.items() if "+cat" not in n}

    def closed(name: str) -> float:
        return 100 * (slot[name] - low) / (high - low) if name in slot and high != low else 0.0

    parts = [
        f"best (c)/(d) condition {label}: {max(group, key=group.get)}, "
        f"{closed(max(group, key=group.get)):.0f}% of the slot-F1 gap"
        for label, group in (("with catalogs", with_cat), ("without catalogs", without))
        if group
    ]
    best = max(synthetic, key=synthetic.get) if synthetic else None
    joined = "; ".join(parts)
    verdict = (
        joined[:1].upper() + joined[1:] + ". Target (c) or (d) closes >= 50%: "
        f"{'met' if best and closed(best) >= 50 else 'not met'}."
    )
    template = (HERE / "README.template.md").read_text(encoding="utf-8")
    return template.format(
        command=command,
        induction_s=f"{speed['induction_s']:.2f}",
        rules=speed["rules"],
        structural_rules=speed["structural_rules"],
        unique_sentences=f"{speed['unique_sentences']:,}",
        sample_s=f"{speed['sample_100k_s']:.2f}",
        unique_in_100k=f"{speed['unique_in_100k']:,}",
        seeds=len(next(iter(results.values()))),
        coverage_golden=_mean_std([c["golden"] for c in coverage]),
        coverage_catalogs=_mean_std([c["catalogs"] for c in coverage]),
        coverage_small=_mean_std([c["small_catalogs"] for c in coverage]),
        table="\n".join(rows),
        verdict=verdict,
    )


def merge(files: list[Path]) -> dict:
    """One results record from per-seed records: the commands of all, the speed of the first, rows joined
    (the value coverage is left to the caller)."""
    records = [json.loads(f.read_text()) for f in files]
    results: dict[str, list[dict]] = {}
    for record in records:
        for name, rows in record["results"].items():
            results.setdefault(name, []).extend(rows)
    return {"commands": [c for r in records for c in r["commands"]], "speed": records[0]["speed"], "results": results}


def load_snips(snips: Path) -> tuple[list, list, list]:
    """The train_<Intent>.json, train_<Intent>_full.json and validate_<Intent>.json utterances of INTENTS."""
    return tuple(
        [u for i in INTENTS for u in load_utterances(snips / pattern.format(i))]
        for pattern in ("train_{}.json", "train_{}_full.json", "validate_{}.json")
    )


def coverage_by_seed(snips: Path, seeds: list[int], per_intent: int) -> list[dict[str, float]]:
    """:func:`value_coverage` of the validate files for the golden set and catalogs of each seed."""
    train_files, full, test = load_snips(snips)
    out = []
    for seed in seeds:
        golden = select_golden(train_files, per_intent, seed)
        small = value_coverage(test, golden, catalog_values(train_files, golden))["catalogs"]
        large = value_coverage(test, golden, catalog_values(train_files + full, golden))
        out.append({**large, "small_catalogs": small})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snips", type=Path, default=HERE.parents[2] / "shared" / "data" / "snips")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--golden", type=int, default=50)
    parser.add_argument("--budget", type=int, default=1000, help="synthetic utterances per intent")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--only", nargs="+", help="run only the conditions whose names start with these")
    parser.add_argument("--merge", type=Path, nargs="+", help="join these results files into --out, run nothing")
    parser.add_argument("--render-only", action="store_true", help="rewrite README.md from --out, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python experiments/synthetic_bootstrap/run.py " + shlex.join(sys.argv[1:])
    if args.merge:
        record = merge(args.merge)
        record["commands"].append(command)
        if any(len(rows) != len(args.seeds) for rows in record["results"].values()):
            parser.error(
                f"--seeds {args.seeds} must list the seeds of the merged files: each condition needs one run per seed"
            )
        record["coverage"] = coverage_by_seed(args.snips, args.seeds, args.golden)
        args.out.write_text(json.dumps(record, indent=1))
        (HERE / "README.md").write_text(render_readme(record), encoding="utf-8")
        return
    if args.render_only:
        (HERE / "README.md").write_text(render_readme(json.loads(args.out.read_text())), encoding="utf-8")
        return

    speed = speed_benchmark(args.snips)
    print("speed:", json.dumps(speed))
    train_files, full, test = load_snips(args.snips)
    labels = Labels.of(full + test)
    cache = None
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        golden = select_golden(train_files, args.golden, seed)
        catalogs = catalog_values(train_files + full, golden)
        small = catalog_values(train_files, golden)
        for name, make in conditions(golden, catalogs, small, full, args.budget, seed).items():
            if args.only and not any(name.startswith(prefix) for prefix in args.only):
                continue
            t = time.perf_counter()
            data = make()
            config = NluTrainingConfig(steps=args.steps, seed=seed)
            nlu = train(data, config, labels=labels, cache=cache)
            cache = nlu.cache
            scores = {**evaluate(nlu, test), "train_size": len(data), "seconds": time.perf_counter() - t}
            results.setdefault(name, []).append(scores)
            print(seed, name, json.dumps(scores), flush=True)
    coverage = coverage_by_seed(args.snips, args.seeds, args.golden)
    record = {"commands": [command], "speed": speed, "results": results, "coverage": coverage}
    args.out.write_text(json.dumps(record, indent=1))
    (HERE / "README.md").write_text(render_readme(record), encoding="utf-8")


if __name__ == "__main__":
    main()
