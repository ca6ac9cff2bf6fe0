"""Synthetic bootstrap on SNIPS: does data generated from 50 golden utterances per intent help NLU?

Conditions (per seed, golden = 50 utterances per intent of train_<Intent>.json drawn with the seed):
  a   golden only
  b   golden + grammar samples (Bayesian model merging, the grammar's own distribution)
  c   b + guided resampling (Jaccard-allowed slot value swaps across intents)
  c+cat  c with catalogs: slot values (values only, no sentences) of train_<Intent>_full.json
  d-entropy / d-borrow  c with the budget split over patterns by complexity / by golden frequency
  e   the full training set (train_<Intent>_full.json), the upper bound
Model: frozen MiniLM (all-MiniLM-L6-v2) with a trained intent head and BiGRU slot tagger
(trustml.synth.nlu_eval), evaluated on validate_<Intent>.json (intent accuracy, CoNLL slot F1).
Also measures the issue's speed targets (induction on 60 golden utterances, 100k samples).

    python experiments/synthetic_bootstrap/run.py --snips ../shared/data/snips --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trustml.synth.catalog import load_catalogs
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
    return {"induction_s": statistics.median(times), "rules": stats["rules"],
            "structural_rules": stats["structural_rules"], "unique_sentences": fst.count()["PlayMusic"],
            "sample_100k_s": sample_s, "unique_in_100k": len({u.text for u in samples})}


def write_catalogs(snips: Path, folder: Path) -> None:
    """One catalog per slot name: the distinct values of that slot in the ``_full`` training files."""
    values: dict[str, dict[str, None]] = {}
    for intent in INTENTS:
        for u in load_utterances(snips / f"train_{intent}_full.json"):
            for slot, value in u.slot_values():
                values.setdefault(slot, {})[value] = None
    for slot, vals in values.items():
        (folder / f"{slot}.txt").write_text("\n".join(vals) + "\n", encoding="utf-8")


def conditions(golden, catalogs, full, budget: int, seed: int) -> dict[str, list]:
    """The training set of every condition for one seed."""
    induction = InductionConfig(seed=seed)

    def synth(allocation: str, resampling: bool, cats=None) -> list:
        config = SynthesisConfig(induction=induction, budget_per_intent=budget, allocation=allocation,
                                 resampling=resampling, seed=seed)
        return synthesize(golden, cats or {}, config).dataset

    return {
        "a golden": list(golden),
        "b + grammar": synth("grammar", False),
        "c + resampling": synth("grammar", True),
        "c+cat + catalogs": synth("grammar", True, catalogs),
        "d entropy allocation": synth("entropy", True),
        "d borrow allocation": synth("borrow", True),
        "e full training set": list(full),
    }


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def render_readme(speed: dict[str, float], results: dict[str, list[dict]], command: str) -> str:
    """README.md: the claim, the exact command, the speed targets and the accuracy table."""
    slot = {name: statistics.mean(r["slot_f1"] for r in rows) for name, rows in results.items()}
    low, high = slot.get("a golden", 0.0), slot.get("e full training set", 1.0)
    rows = []
    for name, runs in results.items():
        closed = (slot[name] - low) / (high - low) if high != low else 0.0
        size = statistics.mean(r["train_size"] for r in runs)
        rows.append(f"| {name} | {size:.0f} | {_mean_std([r['intent_accuracy'] for r in runs])} | "
                    f"{_mean_std([r['slot_f1'] for r in runs])} | {100 * closed:.0f}% |")
    synthetic = {n: v for n, v in slot.items() if n[0] in "bcd"}
    best = max(synthetic, key=synthetic.get) if synthetic else "none"
    pure = {n: v for n, v in synthetic.items() if n[0] in "cd" and "cat" not in n}
    best_pure = max(pure, key=pure.get) if pure else "none"

    def closed(name: str) -> float:
        return 100 * (slot[name] - low) / (high - low) if name in slot and high != low else 0.0

    verdict = (f"Best synthetic condition: {best} closes {closed(best):.0f}% of the slot-F1 gap; best (c)/(d) "
               f"condition without catalogs: {best_pure}, {closed(best_pure):.0f}%. Target (c) or (d) >= 50%: "
               f"{'met' if max(closed(best_pure), closed(best)) >= 50 else 'not met'}.")
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
        table="\n".join(rows),
        verdict=verdict,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snips", type=Path, default=HERE.parents[2] / "shared" / "data" / "snips")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--golden", type=int, default=50)
    parser.add_argument("--budget", type=int, default=500, help="synthetic utterances per intent")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--render-only", action="store_true", help="rewrite README.md from --out, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.render_only:
        saved = json.loads(args.out.read_text())
        command = "python experiments/synthetic_bootstrap/run.py " + " ".join(saved["argv"])
        (HERE / "README.md").write_text(render_readme(saved["speed"], saved["results"], command), encoding="utf-8")
        return

    speed = speed_benchmark(args.snips)
    print("speed:", json.dumps(speed))
    train_files = [u for i in INTENTS for u in load_utterances(args.snips / f"train_{i}.json")]
    full = [u for i in INTENTS for u in load_utterances(args.snips / f"train_{i}_full.json")]
    test = [u for i in INTENTS for u in load_utterances(args.snips / f"validate_{i}.json")]
    labels = Labels.of(full + test)
    with tempfile.TemporaryDirectory() as tmp:
        write_catalogs(args.snips, Path(tmp))
        catalogs = load_catalogs(tmp)
    cache = None
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        golden = select_golden(train_files, args.golden, seed)
        for name, data in conditions(golden, catalogs, full, args.budget, seed).items():
            t = time.perf_counter()
            config = NluTrainingConfig(steps=args.steps, seed=seed)
            nlu = train(data, config, labels=labels, cache=cache)
            cache = nlu.cache
            scores = {**evaluate(nlu, test), "train_size": len(data), "seconds": time.perf_counter() - t}
            results.setdefault(name, []).append(scores)
            print(seed, name, json.dumps(scores), flush=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "speed": speed, "results": results}, indent=1))
    command = "python experiments/synthetic_bootstrap/run.py " + " ".join(sys.argv[1:])
    (HERE / "README.md").write_text(render_readme(speed, results, command.strip()), encoding="utf-8")


if __name__ == "__main__":
    main()
