"""Entropy-based allocation of a synthetic sample budget over semantic patterns.

Each golden utterance is abstracted to its pattern: its slots in order with carrier-word runs as
``other`` (e.g. ``other + artist + other + track``). A pattern ``k`` of intent ``i`` has complexity
(in bits)

    C(k) = sum_{s in k} H(V_s | i)  +  H(combinations | k)

where ``H(V_s | i) = -sum_v p(v) log2 p(v)`` is the Shannon entropy of slot ``s``'s value distribution in
intent ``i`` (golden counts, or the grammar's slot classes with catalog values when a grammar is given)
and ``H(combinations | k)`` is the entropy of the observed slot-value combinations (tuples of the
pattern's values) among the golden utterances of ``k``. The ``entropy`` strategy gives each pattern
``floor + (B - K floor) C(k) / sum_j C(j)`` samples of the intent's budget ``B``; ``borrow`` copies the
golden pattern frequencies instead; both round by largest remainders so the counts sum to ``B``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trustml.errors import ConfigError
from trustml.synth.annotation import Utterance
from trustml.synth.grammar import Grammar

Pattern = tuple[str, ...]


def entropy(weights: Sequence[float]) -> float:
    """Shannon entropy in bits, ``-sum_i p_i log2 p_i`` with ``p = w / sum(w)`` (0 for no mass)."""
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if total <= 0:
        return 0.0
    p = w[w > 0] / total
    return max(0.0, float(-(p * np.log2(p)).sum()))


@dataclass(frozen=True)
class PatternStats:
    """One pattern of one intent: golden frequency, the two entropy terms and the complexity (bits)."""

    intent: str
    pattern: Pattern
    count: int
    value_entropy: float
    combination_entropy: float

    @property
    def complexity(self) -> float:
        """``C(k) = sum_s H(V_s) + H(combinations | k)``."""
        return self.value_entropy + self.combination_entropy


def pattern_stats(utterances: Sequence[Utterance], grammar: Grammar | None = None) -> list[PatternStats]:
    """The :class:`PatternStats` of every (intent, pattern) in ``utterances``, sorted by intent and pattern."""
    golden: dict[str, dict[str, Counter[str]]] = {}
    groups: dict[tuple[str, Pattern], list[Utterance]] = {}
    for u in utterances:
        for slot, value in u.slot_values():
            golden.setdefault(u.intent, {}).setdefault(slot, Counter())[value] += 1
        groups.setdefault((u.intent, u.pattern()), []).append(u)
    slot_entropy: dict[tuple[str, str], float] = {}
    for intent, slots in golden.items():
        for slot, counts in slots.items():
            weights = counts
            if grammar is not None and intent in grammar.intents and slot in grammar.intents[intent].slot_values:
                weights = grammar.intents[intent].slot_values[slot]
            slot_entropy[(intent, slot)] = entropy(list(weights.values()))
    out = []
    for (intent, pattern), members in sorted(groups.items()):
        combos = Counter(tuple(v for _, v in u.slot_values()) for u in members)
        value_h = sum(slot_entropy[(intent, s)] for s in pattern if s != "other")
        combo_h = entropy(list(combos.values())) if any(s != "other" for s in pattern) else 0.0
        out.append(PatternStats(intent, pattern, len(members), value_h, combo_h))
    return out


def largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Non-negative integers proportional to ``shares`` that sum to ``total`` (Hamilton's method)."""
    s = np.asarray(shares, dtype=float)
    if total < 0 or (s < 0).any():
        raise ConfigError("allocation needs a non-negative budget and non-negative shares")
    if s.sum() <= 0:
        s = np.ones_like(s)
    exact = s / s.sum() * total
    base = np.floor(exact).astype(int)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base.tolist()


def allocate(
    stats: Sequence[PatternStats], budget: Mapping[str, int], strategy: str = "entropy", floor: int = 1
) -> dict[tuple[str, Pattern], int]:
    """Samples per (intent, pattern): ``budget[intent]`` split by ``strategy`` (``entropy`` or ``borrow``).

    ``entropy`` first gives every pattern ``floor`` samples (when the budget allows) and splits the rest in
    proportion to :attr:`PatternStats.complexity`; ``borrow`` splits in proportion to golden frequencies.
    """
    if strategy not in ("entropy", "borrow"):
        raise ConfigError(f"allocation.strategy must be 'entropy' or 'borrow', got '{strategy}'")
    out: dict[tuple[str, Pattern], int] = {}
    by_intent: dict[str, list[PatternStats]] = {}
    for st in stats:
        by_intent.setdefault(st.intent, []).append(st)
    for intent, group in by_intent.items():
        total = int(budget.get(intent, 0))
        if strategy == "borrow":
            counts = largest_remainder([st.count for st in group], total)
        else:
            base = floor if floor * len(group) <= total else 0
            extra = largest_remainder([st.complexity for st in group], total - base * len(group))
            counts = [base + e for e in extra]
        out.update({(intent, st.pattern): c for st, c in zip(group, counts, strict=True)})
    return out


def allocation_report(stats: Sequence[PatternStats], counts: Mapping[tuple[str, Pattern], int]) -> list[dict]:
    """One row per pattern: intent, pattern, golden count, entropies, complexity and allocated samples."""
    return [
        {
            "intent": st.intent,
            "pattern": " + ".join(st.pattern),
            "golden": st.count,
            "value_entropy_bits": round(st.value_entropy, 4),
            "combination_entropy_bits": round(st.combination_entropy, 4),
            "complexity_bits": round(st.complexity, 4),
            "allocated": counts.get((st.intent, st.pattern), 0),
        }
        for st in stats
    ]
