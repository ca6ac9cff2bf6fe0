"""Guided resampling: swap slot values between utterances where the slot types' value sets overlap.

A *unit* is a slot in a context: ``(intent, slot)`` (or ``("*", slot)`` when contexts are pooled). Two
units may exchange values when the Jaccard index of their value sets,
``J(A, B) = |A & B| / |A | B|`` (values compared case-insensitively), is at least the threshold; a
unit always keeps its own values. A resampled utterance is a source utterance whose every slot value is
drawn uniformly from the union of the values of the units its slot may take from, so a value of
``genre`` in a book-search context never lands in "play ... music" unless the two genre sets overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustml.errors import ConfigError
from trustml.synth.annotation import SlotSpan, Utterance
from trustml.synth.grammar import Grammar

Unit = tuple[str, str]


def unit_of(intent: str, slot: str, by_intent: bool) -> Unit:
    """The unit of ``slot`` in ``intent``: ``(intent, slot)``, or ``("*", slot)`` when not ``by_intent``."""
    return (intent, slot) if by_intent else ("*", slot)


def value_sets(utterances: Iterable[Utterance], by_intent: bool = True) -> dict[Unit, list[str]]:
    """The distinct values of each unit in ``utterances`` (first-seen order)."""
    out: dict[Unit, dict[str, None]] = {}
    for u in utterances:
        for slot, value in u.slot_values():
            out.setdefault(unit_of(u.intent, slot, by_intent), {})[value] = None
    return {unit: list(values) for unit, values in out.items()}


def grammar_value_sets(grammar: Grammar, by_intent: bool = True) -> dict[Unit, list[str]]:
    """The value sets of each unit in ``grammar`` (golden values plus catalog extensions)."""
    out: dict[Unit, dict[str, None]] = {}
    for intent, g in grammar.intents.items():
        for slot, values in g.slot_values.items():
            out.setdefault(unit_of(intent, slot, by_intent), {}).update(dict.fromkeys(values))
    return {unit: list(values) for unit, values in out.items()}


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """``|A & B| / |A | B|`` of the case-folded value sets (0 for two empty sets)."""
    sa, sb = {v.casefold() for v in a}, {v.casefold() for v in b}
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


@dataclass(frozen=True)
class SwapPolicy:
    """Which units may exchange values: ``jaccard[(a, b)]`` for every pair, ``donors[a]`` the units whose
    values ``a`` may take (itself first), ``pools[a]`` the union of their values as ``(value, donor unit)``
    (each value once, attributed to the first donor that has it)."""

    threshold: float
    by_intent: bool
    jaccard: dict[tuple[Unit, Unit], float]
    donors: dict[Unit, list[Unit]]
    pools: dict[Unit, list[tuple[str, Unit]]]

    def allowed(self, a: Unit, b: Unit) -> bool:
        """Whether ``a`` may take values of ``b``."""
        return b in self.donors.get(a, [])

    def report(self) -> dict[str, Any]:
        """The allowed and blocked pairs of distinct units, each with its Jaccard index."""
        pairs = sorted(self.jaccard.items())
        fmt = [{"a": "/".join(a), "b": "/".join(b), "jaccard": round(j, 4)} for (a, b), j in pairs]
        return {
            "threshold": self.threshold,
            "allowed": [p for p, ((a, b), _) in zip(fmt, pairs, strict=True) if self.allowed(a, b)],
            "blocked": [p for p, ((a, b), _) in zip(fmt, pairs, strict=True) if not self.allowed(a, b)],
        }


def swap_policy(values: Mapping[Unit, Sequence[str]], threshold: float, by_intent: bool = True) -> SwapPolicy:
    """The :class:`SwapPolicy` for unit value sets ``values`` and a Jaccard ``threshold`` in [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"resampling.threshold must lie in [0, 1], got {threshold}")
    units = sorted(values)
    scores: dict[tuple[Unit, Unit], float] = {}
    donors: dict[Unit, list[Unit]] = {u: [u] for u in units}
    for i, a in enumerate(units):
        for b in units[i + 1 :]:
            j = jaccard(values[a], values[b])
            scores[(a, b)] = j
            if j >= threshold:
                donors[a].append(b)
                donors[b].append(a)
    pools: dict[Unit, list[tuple[str, Unit]]] = {}
    for u in units:
        first: dict[str, Unit] = {}
        for d in donors[u]:
            for v in values[d]:
                first.setdefault(v, d)
        pools[u] = list(first.items())
    return SwapPolicy(threshold, by_intent, scores, donors, pools)


def swap_values(utterances: Sequence[Utterance], policy: SwapPolicy, seed: int) -> tuple[list[Utterance], dict]:
    """Each utterance with every slot value redrawn uniformly from its unit's pool (the carrier words stay);
    and a report: the policy's allowed/blocked pairs and how many values came from another unit."""
    rng = np.random.default_rng(seed)
    draws = iter(rng.random(sum(len(u.spans) for u in utterances)).tolist())
    swaps: dict[str, int] = {}
    out = []
    for src in utterances:
        text, spans, pos = "", [], 0
        for span in src.spans:
            unit = unit_of(src.intent, span.slot, policy.by_intent)
            pool = policy.pools.get(unit) or [(src.value(span), unit)]
            value, donor = pool[int(next(draws) * len(pool))]
            if donor != unit:
                key = f"{'/'.join(donor)} -> {'/'.join(unit)}"
                swaps[key] = swaps.get(key, 0) + 1
            text += src.text[pos : span.start]
            spans.append(SlotSpan(len(text), len(text) + len(value), span.slot))
            text += value
            pos = span.end
        out.append(Utterance(text + src.text[pos:], src.intent, tuple(spans)))
    return out, {**policy.report(), "swaps": dict(sorted(swaps.items())), "generated": len(out)}


def resample(
    utterances: Sequence[Utterance], n: int, policy: SwapPolicy, seed: int
) -> tuple[list[Utterance], dict[str, Any]]:
    """``n`` utterances: sources drawn uniformly with replacement from the utterances that have slots, their
    values redrawn by :func:`swap_values`."""
    sources = [u for u in utterances if u.spans]
    if not sources or n <= 0:
        return [], {**policy.report(), "swaps": {}, "generated": 0}
    picks = np.random.default_rng(seed).integers(len(sources), size=n)
    return swap_values([sources[i] for i in picks.tolist()], policy, seed + 1)
