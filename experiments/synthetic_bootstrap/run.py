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
(intent accuracy, CoNLL slot F1). The tag and intent inventory of each model is that of its own training set
(``Labels.of(data)``): a test slot type the training side never saw counts as an error, as in a deployment.
Settings: ``--prior-weights`` lists the induction prior weights to choose from; with more than one, each seed
picks the one with the best slot F1 of condition (c) on a dev split of ``--dev-per-intent`` utterances per
intent carved from train_<Intent>.json (never golden, never in the catalogs), never on the validate files.
Also measures the issue's speed targets (induction on 60 golden utterances, 100k samples).

    python experiments/synthetic_bootstrap/run.py --snips ../shared/data/snips --seeds 0 1 2

Seeds can run in separate processes (``--out results_seed<k>.json``) and be merged with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Induction time on 60 golden PlayMusic utterances (median of ``repeats``), grammar size, 100k samples;
    wall and CPU (``time.process_time``) seconds, and the load average before."""
    golden = select_golden(load_utterances(snips / "train_PlayMusic.json"), 60, seed=0)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        grammar, _ = induce_grammar(golden, InductionConfig())
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    fst = GrammarFst(grammar)
    t, c = time.perf_counter(), time.process_time()
    samples = fst["PlayMusic"].sample(100_000, seed=0)
    sample_s, sample_cpu = time.perf_counter() - t, time.process_time() - c
    stats = grammar.stats()["total"]
    return {
        "load_average_before": load,
        "induction_cpu_s": statistics.median(cpu),
        "sample_100k_cpu_s": sample_cpu,
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


def cut(catalogs: Catalogs, size: int) -> Catalogs:
    """Each catalog's first ``size`` values (the order in which the training files list them)."""
    return {name: values[:size] for name, values in catalogs.items()}


def sized_name(size: int) -> str:
    """The condition name of the catalog-size study: (c+cat) with every catalog cut to ``size`` values."""
    return f"c+cat resampling + catalogs cut to {size} values"


def condition_order(name: str) -> tuple[int, int]:
    """Rows in :data:`CONDITIONS` order, the catalog-size rows after the small-catalog row, by size."""
    if name in CONDITIONS:
        return (CONDITIONS.index(name), 0)
    return (CONDITIONS.index("c+cat resampling + small catalogs"), int(name.split("cut to ")[1].split()[0]))


def conditions(
    golden,
    catalogs: Catalogs,
    small: Catalogs,
    full,
    budget: int,
    seed: int,
    prior_weight: float = 1.0,
    catalog_sizes: tuple[int, ...] = (),
) -> dict[str, Callable]:
    """For each name of :data:`CONDITIONS` (and of the catalog-size rows), a function that builds its training
    set for one seed."""
    induction = InductionConfig(seed=seed, prior_weight=prior_weight)

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
    out = dict(zip(CONDITIONS, makers, strict=True))
    for size in catalog_sizes:
        out[sized_name(size)] = synth("grammar", True, cut(catalogs, size))
    return out


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def verdict_lines(slot: dict[str, float]) -> str:
    """The verdict, golden-only conditions and catalog conditions named separately (target: a (c) or (d)
    condition closes >= 50% of the slot-F1 gap between (a) and (e))."""
    low, high = slot.get("a golden", 0.0), slot.get("e full training set", 1.0)

    def closed(name: str) -> float:
        return 100 * (slot[name] - low) / (high - low) if high != low else 0.0

    synthetic = {n: v for n, v in slot.items() if n[0] in "cd"}
    groups = (
        (
            "Golden-only conditions (no data beyond the 50 golden utterances per intent)",
            {n: v for n, v in synthetic.items() if "+cat" not in n},
        ),
        (
            "Catalog conditions (slot-value lists harvested from the SNIPS training files train_<Intent>.json and "
            "train_<Intent>_full.json, values of the non-golden utterances only, no sentences, nothing from the "
            "validate files; a user needs such gazetteers for every slot type)",
            {n: v for n, v in synthetic.items() if "+cat" in n},
        ),
    )
    lines = []
    for label, group in groups:
        if not group:
            lines.append(f"- {label}: not run.")
            continue
        # no condition is picked by its test score: the verdict holds for all of the group's (c)/(d) rows or none
        shares = sorted(closed(n) for n in group)
        if shares[0] >= 50:
            verdict = "met by every one of them"
        elif shares[-1] >= 50:
            verdict = "met by some, not all (which one to use would have to be chosen on dev data)"
        else:
            verdict = "not met by any"
        lines.append(
            f"- {label}: the {len(group)} (c)/(d) conditions close {shares[0]:.0f}-{shares[-1]:.0f}% of the slot-F1 "
            f"gap a→e; target (>= 50%): {verdict}."
        )
    return "\n".join(lines)


def render_growth() -> str:
    """The growth table of ``benchmark.json`` (written by benchmark.py), or a line saying it was not run."""
    path = HERE / "benchmark.json"
    if not path.exists():
        return "Not run (`benchmark.py` writes `benchmark.json`)."
    bench = json.loads(path.read_text())
    rows = [
        "| utterances | wall s | CPU s | peak RSS MB | rules | steps | stopped | load average before |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in bench["induction"]:
        if "failed" in r:
            rows.append(f"| {r['size']} | failed (exit {r['failed']}) | | | | | | {r['load_average_before']} |")
            continue
        rows.append(
            f"| {r['utterances']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['rules']:,} | {r['steps']:,} | {', '.join(r['stopped'])} | {r['load_average_before']} |"
        )
    by_size = {str(r["size"]): r for r in bench["induction"] if "failed" not in r}
    for size, target in (("1000", 5.0), ("10000", 60.0)):
        r = by_size.get(size)
        if r is None:
            rows.append(f"\nTarget {size} utterances <= {target:.0f} s: not measured.")
            continue
        rows.append(
            f"\nTarget {r['utterances']:,} utterances <= {target:.0f} s on one core: CPU {r['cpu_s']:.1f} s, "
            f"{'met' if r['cpu_s'] <= target else 'not met'}; wall {r['wall_s']:.1f} s at load average "
            f"{r['load_average_before'].split()[0]}, "
            f"{'met' if r['wall_s'] <= target else 'not met'}."
        )
    peak = max((r["peak_rss_mb"] for r in by_size.values()), default=float("nan"))
    rows.append(f"\nPeak memory <= 2 GB: largest peak RSS {peak:.0f} MB, {'met' if peak <= 2048 else 'not met'}.")
    cli = bench["cli"]
    timings = cli.get("timings") or {}
    rows.append("")
    rows.append(
        f"CLI `{cli['command']}` (2,000 utterances) under a {cli['memory_limit_mb']} MB address-space limit: exit "
        f"status {cli['exit_status']}, {cli['wall_s']:.1f} s wall, {cli['cpu_s']:.1f} s CPU, peak RSS "
        f"{cli['peak_rss_mb']:.0f} MB; induction {timings.get('induction_s', float('nan')):.1f} s, compile "
        f"{timings.get('compile_s', float('nan')):.2f} s, sampling {timings.get('sampling_s', float('nan')):.2f} s "
        f"(wall); load average before: {cli['load_average_before']}."
    )
    rows.append("")
    rows += [f"    {c}" for c in bench.get("commands", [])]
    return "\n".join(rows)


def render_catalog_study() -> str:
    """Slot F1 against catalog size from ``results_catsize_seed*.json`` (``--catalog-sizes`` runs), if any."""
    files = sorted(HERE.glob("results_catsize_seed*.json"))
    if not files:
        return (
            "Not run. Command: `run.py --seeds 0 --catalog-sizes 10 100 1000 --only 'a golden' "
            "'c+cat resampling + catalogs cut' --out results_catsize_seed0.json`."
        )
    rows = [
        "| condition | catalog values (all slot types) | train size | slot F1 % | intent accuracy % |",
        "| --- | --- | --- | --- | --- |",
    ]
    seeds = 0
    merged: dict[str, list[dict]] = {}
    commands = []
    for f in files:
        record = json.loads(f.read_text())
        commands += record["commands"]
        seeds += 1
        for name, runs in record["results"].items():
            merged.setdefault(name, []).extend(runs)
    for name in sorted(merged, key=condition_order):
        runs = merged[name]
        values = statistics.mean(r.get("catalog_values", 0) for r in runs) if "cut to" in name else 0
        rows.append(
            f"| {name} | {values:,.0f} | {statistics.mean(r['train_size'] for r in runs):.0f} | "
            f"{_mean_std([r['slot_f1'] for r in runs])} | {_mean_std([r['intent_accuracy'] for r in runs])} |"
        )
    rows += ["", f"{seeds} seed(s); tag inventory from each model's training set; commands:", ""]
    rows += [f"    {c}" for c in commands]
    return "\n".join(rows)


def render_allocation_study() -> str:
    """The allocation study's table from ``results_allocation.jsonl`` (``allocation.py``), or why there is none."""
    from allocation import read, report

    records = read(HERE / "results_allocation.jsonl")
    if not records:
        return "Not run yet: no `results_allocation.jsonl`."
    cells = {(r["encoder"], r["budget"], r["seed"]) for r in records}
    return f"{len(cells)} of the 30 (encoder, budget, seed) cells ran.\n\n" + report(records)


def render_readme(record: dict) -> str:
    """README.md: the claim, the exact commands, the speed targets, the value coverage and the accuracy table."""
    speed, results, coverage = record["speed"], record["results"], record["coverage"]
    command = "\n    ".join(record["commands"])
    results = {name: results[name] for name in sorted(results, key=condition_order)}
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
    verdict = verdict_lines(slot)
    template = (HERE / "README.template.md").read_text(encoding="utf-8")
    return template.format(
        command=command,
        induction_s=f"{speed['induction_s']:.2f}",
        induction_cpu_s=f"{speed.get('induction_cpu_s', float('nan')):.2f}",
        sample_cpu_s=f"{speed.get('sample_100k_cpu_s', float('nan')):.2f}",
        speed_load=speed.get("load_average_before", "not recorded"),
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
        growth=render_growth(),
        catalog_study=render_catalog_study(),
        allocation_study=render_allocation_study(),
        labels=record.get("labels", "test"),
        selection=render_selection(record.get("selection", [])),
    )


def render_selection(selection: list[dict]) -> str:
    """The induction prior weight each seed chose on its dev split, with the dev slot F1 of every candidate."""
    if not selection:
        return "Induction prior weight: fixed (no dev selection recorded)."
    parts = []
    for s in sorted(selection, key=lambda s: s["seed"]):
        scores = " / ".join(f"{w}: {100 * f:.1f}" for w, f in s["dev_slot_f1"].items())
        parts.append(f"seed {s['seed']}: {s['prior_weight']} (dev slot F1 of condition c by weight, {scores})")
    return "Induction prior weight chosen on the dev split: " + "; ".join(parts) + "."


def merge(files: list[Path]) -> dict:
    """One results record from per-seed records: the commands of all, the speed of the first, rows joined
    (the value coverage is left to the caller)."""
    records = [json.loads(f.read_text()) for f in files]
    results: dict[str, list[dict]] = {}
    for record in records:
        for name, rows in record["results"].items():
            results.setdefault(name, []).extend(rows)
    labels = {r.get("labels", "test") for r in records}
    if len(labels) > 1:
        raise SystemExit(f"the merged files use different tag inventories ({sorted(labels)}); re-run them alike")
    return {
        "commands": [c for r in records for c in r["commands"]],
        "speed": records[0]["speed"],
        "results": results,
        "labels": labels.pop(),
        "selection": [s for r in records for s in r.get("selection", [])],
    }


def load_snips(snips: Path) -> tuple[list, list, list]:
    """The train_<Intent>.json, train_<Intent>_full.json and validate_<Intent>.json utterances of INTENTS."""
    return tuple(
        [u for i in INTENTS for u in load_utterances(snips / pattern.format(i))]
        for pattern in ("train_{}.json", "train_{}_full.json", "validate_{}.json")
    )


def golden_and_dev(train_files, per_intent: int, dev_per_intent: int, seed: int) -> tuple[list, list]:
    """The seed's golden utterances and a disjoint dev split of ``dev_per_intent`` per intent from the rest."""
    golden = select_golden(train_files, per_intent, seed)
    taken = {(u.intent, u.text) for u in golden}
    rest = [u for u in train_files if (u.intent, u.text) not in taken]
    return golden, select_golden(rest, dev_per_intent, seed + 1000) if dev_per_intent else []


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
    parser.add_argument(
        "--speed-only", action="store_true", help="re-measure the speed targets into --out and rewrite README.md"
    )
    parser.add_argument("--finetune", action="store_true", help="fine-tune the encoder too (default: frozen)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: NluTrainingConfig's)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of the NLU model (cpu, gpu)")
    parser.add_argument("--catalog-sizes", type=int, nargs="*", default=[], help="catalog-size study rows")
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[1.0], help="chosen on the dev split")
    parser.add_argument("--dev-per-intent", type=int, default=100, help="dev utterances per intent (train_ files)")
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
    if args.speed_only:
        record = json.loads(args.out.read_text())
        record["speed"] = speed_benchmark(args.snips)
        record["commands"].append(command)
        args.out.write_text(json.dumps(record, indent=1))
        (HERE / "README.md").write_text(render_readme(record), encoding="utf-8")
        return
    if args.render_only:
        (HERE / "README.md").write_text(render_readme(json.loads(args.out.read_text())), encoding="utf-8")
        return

    speed = speed_benchmark(args.snips)
    print("speed:", json.dumps(speed))
    train_files, full, test = load_snips(args.snips)
    cache = None
    results: dict[str, list[dict]] = {}
    selection: list[dict] = []
    for seed in args.seeds:
        golden, dev = golden_and_dev(train_files, args.golden, args.dev_per_intent, seed)
        catalogs = catalog_values(train_files + full, golden + dev)
        small = catalog_values(train_files, golden + dev)
        config = NluTrainingConfig(
            steps=args.steps,
            seed=seed,
            freeze_encoder=not args.finetune,
            accelerator=args.accelerator,
            **({"lr": args.lr} if args.lr is not None else {}),
        )
        weight = args.prior_weights[0]
        if len(args.prior_weights) > 1:
            dev_scores = {}
            for w in args.prior_weights:
                data = conditions(golden, catalogs, small, full, args.budget, seed, w)["c + resampling"]()
                nlu = train(data, config, labels=Labels.of(data), cache=cache)
                cache = nlu.cache
                dev_scores[w] = evaluate(nlu, dev)["slot_f1"]
            weight = max(dev_scores, key=dev_scores.get)
            selection.append({"seed": seed, "dev_slot_f1": dev_scores, "prior_weight": weight})
            print(seed, "dev selection", json.dumps(selection[-1]), flush=True)
        rows = conditions(golden, catalogs, small, full, args.budget, seed, weight, tuple(args.catalog_sizes))
        for name, make in rows.items():
            if args.only and not any(name.startswith(prefix) for prefix in args.only):
                continue
            t = time.perf_counter()
            data = make()
            nlu = train(data, config, labels=Labels.of(data), cache=cache)  # training-side inventory only
            cache = nlu.cache
            scores = {**evaluate(nlu, test), "train_size": len(data), "seconds": time.perf_counter() - t}
            if name.startswith("c+cat resampling + catalogs cut to"):
                size = int(name.split("cut to ")[1].split()[0])
                scores["catalog_values"] = sum(len(v) for v in cut(catalogs, size).values())
            results.setdefault(name, []).append(scores)
            print(seed, name, json.dumps(scores), flush=True)
    coverage = coverage_by_seed(args.snips, args.seeds, args.golden)
    record = {
        "commands": [command],
        "speed": speed,
        "results": results,
        "coverage": coverage,
        "labels": "train",
        "selection": selection,
    }
    args.out.write_text(json.dumps(record, indent=1))
    if not args.only:  # a partial run (--only) keeps README.md: merge or render its results explicitly
        (HERE / "README.md").write_text(render_readme(record), encoding="utf-8")


if __name__ == "__main__":
    main()
