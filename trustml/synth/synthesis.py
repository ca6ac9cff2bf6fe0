"""The synthesis pipeline: golden utterances -> grammar -> allocated samples -> guided resampling -> data set.

1. induce a grammar per intent (:mod:`trustml.synth.induction`) and extend its slot classes by catalogs;
2. compile it to an acceptor (:mod:`trustml.synth.fst`);
3. split each intent's budget over the golden patterns (``entropy`` or ``borrow``,
   :mod:`trustml.synth.allocation`) and sample each pattern's share from the acceptor conditioned on the
   pattern, or (``grammar``) sample the whole budget from the grammar's own distribution;
4. optionally redraw the slot values of the samples across units allowed by the Jaccard policy
   (:mod:`trustml.synth.resampling`);
5. return the data set (golden utterances first when asked) with a report of every step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trustml.errors import ConfigError
from trustml.synth.allocation import allocate, allocation_report, pattern_stats
from trustml.synth.annotation import Utterance
from trustml.synth.catalog import CATALOG_MATCHES, Catalogs, catalog_sizes, explicit_catalogs, extend_slot_classes
from trustml.synth.fst import MAX_ARCS, GrammarFst
from trustml.synth.grammar import Grammar
from trustml.synth.induction import InductionConfig, induce_grammar
from trustml.synth.resampling import grammar_value_sets, swap_policy, swap_values

ALLOCATION_STRATEGIES = ("entropy", "borrow", "grammar")


@dataclass(frozen=True)
class SynthesisConfig:
    """Knobs of :func:`synthesize` (the ``trustml-synth`` config without its I/O options)."""

    induction: InductionConfig = field(default_factory=InductionConfig)
    budget_per_intent: int = 1000
    allocation: str = "entropy"
    allocation_floor: int = 1
    resampling: bool = True
    resampling_threshold: float = 0.1
    resampling_by_intent: bool = True
    catalog_weight: float = 1.0
    catalog_match: str = "values"
    include_golden: bool = True
    seed: int = 0
    max_arcs: int = MAX_ARCS
    progress: bool = False

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATION_STRATEGIES:
            raise ConfigError(
                f"allocation.strategy must be one of {', '.join(ALLOCATION_STRATEGIES)}, got '{self.allocation}'"
            )
        if self.budget_per_intent < 0 or self.allocation_floor < 0 or self.catalog_weight <= 0:
            raise ConfigError("budget_per_intent and allocation.floor must be >= 0 and catalog_weight > 0")
        if self.catalog_match not in CATALOG_MATCHES:
            raise ConfigError(f"catalog_match must be one of {', '.join(CATALOG_MATCHES)}, got '{self.catalog_match}'")
        if self.max_arcs < 0:
            raise ConfigError(f"max_arcs must be >= 0 (0: never count distinct sentences exactly), got {self.max_arcs}")


@dataclass
class SynthesisResult:
    """The grammar, the generated data set and a JSON-serializable report."""

    grammar: Grammar
    dataset: list[Utterance]
    report: dict[str, Any]


def select_golden(utterances: Sequence[Utterance], per_intent: int | None, seed: int) -> list[Utterance]:
    """At most ``per_intent`` utterances per intent, drawn without replacement with ``seed`` (all if None)."""
    if per_intent is None:
        return list(utterances)
    by_intent: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_intent.setdefault(u.intent, []).append(u)
    rng = np.random.default_rng(seed)
    out: list[Utterance] = []
    for intent in sorted(by_intent):
        items = by_intent[intent]
        keep = sorted(rng.permutation(len(items))[:per_intent].tolist())
        out += [items[i] for i in keep]
    return out


def synthesize(golden: Sequence[Utterance], catalogs: Catalogs, config: SynthesisConfig) -> SynthesisResult:
    """Run the pipeline of the module doc on ``golden`` utterances."""
    if not golden:
        raise ConfigError("no golden utterances: check the 'golden' files")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    grammar, traces = induce_grammar(golden, config.induction, progress=config.progress)
    timings["induction_s"] = time.perf_counter() - t
    extend_slot_classes(grammar, catalogs, config.catalog_weight, explicit_catalogs(golden), config.catalog_match)

    t = time.perf_counter()
    fst = GrammarFst(grammar, config.max_arcs)
    timings["compile_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stats = pattern_stats(golden, grammar)
    budget = {intent: config.budget_per_intent for intent in grammar.intents}
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(budget.values()), desc="sample", unit="sentence", mininterval=1.0)
    try:
        if config.allocation == "grammar":
            counts: dict[tuple[str, tuple[str, ...]], int] = {}
            generated = fst.sample(budget, config.seed, progress=bar)
        else:
            counts = allocate(stats, budget, config.allocation, config.allocation_floor)
            generated = []
            for k, ((intent, pattern), n) in enumerate(sorted(counts.items())):
                generated += fst[intent].sample(n, config.seed + k, pattern=pattern, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    timings["sampling_s"] = time.perf_counter() - t

    resampling_report: dict[str, Any] = {"enabled": config.resampling}
    if config.resampling:
        policy = swap_policy(
            grammar_value_sets(grammar, config.resampling_by_intent),
            config.resampling_threshold,
            config.resampling_by_intent,
        )
        generated, swap_report = swap_values(generated, policy, config.seed)
        resampling_report.update(swap_report)

    dataset = (list(golden) if config.include_golden else []) + generated
    counts_report = fst.count_report()
    report = {
        "config": asdict(config),
        "golden": len(golden),
        "catalogs": catalog_sizes(catalogs),
        "catalog_extensions": {
            name: {slot: cats for slot, cats in g.catalog_extensions.items()} for name, g in grammar.intents.items()
        },
        "generated": len(generated),
        "dataset": len(dataset),
        "unique_texts": len({(u.intent, u.text) for u in dataset}),
        "grammar": grammar.stats(),
        "unique_sentences": {name: c["sentences"] for name, c in counts_report.items()},
        "unique_sentences_exact": {name: c["exact"] for name, c in counts_report.items()},
        "induction": [asdict(tr) for tr in traces],
        "induction_stopped_early": sorted(tr.intent for tr in traces if tr.stopped != "converged"),
        "allocation": {"strategy": config.allocation, "patterns": allocation_report(stats, counts)},
        "resampling": resampling_report,
        "timings": timings,
    }
    return SynthesisResult(grammar, dataset, report)
