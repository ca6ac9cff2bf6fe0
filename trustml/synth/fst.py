"""Compile an intent grammar to a weighted finite-state acceptor (pynini) and enumerate or sample from it.

Every carrier word and every ``(slot, value)`` pair is one arc label, so a path spells an annotated
sentence. Arc weights are negative log probabilities in the log semiring: a production ``A -> rhs``
weighs ``-log P(rhs | A)`` and a slot value ``-log P(value | slot)``, so a path's weight is the
derivation's negative log probability and :func:`pynini.randgen` with (fast) ``log_prob`` selection samples
sentences from the grammar's distribution. Sampling restricted to a semantic pattern intersects the
acceptor with a pattern filter and pushes the weights to the start state (which makes the restricted
machine stochastic again), so it samples from the conditional distribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pynini

from trustml.errors import ConfigError
from trustml.synth.annotation import SlotSpan, Utterance
from trustml.synth.grammar import Grammar, IntentGrammar, Nonterminal, SlotRef, Symbol
from trustml.synth.words import is_glued

_EPS = 0


@dataclass(frozen=True)
class Label:
    """What an arc label stands for: a carrier ``word`` (``slot`` is None) or a ``slot`` value."""

    text: str
    slot: str | None = None


class _LabelTable:
    """Label ids (from 1) of words and slot values."""

    def __init__(self) -> None:
        self.labels: list[Label] = [Label("<eps>")]
        self.ids: dict[Label, int] = {}

    def id(self, label: Label) -> int:
        if label not in self.ids:
            self.ids[label] = len(self.labels)
            self.labels.append(label)
        return self.ids[label]


def _single_arc_union(items: Sequence[tuple[int, float]]) -> pynini.Fst:
    """A two-state acceptor with one arc per ``(label, weight)``."""
    f = pynini.Fst(arc_type="log")
    s, t = f.add_state(), f.add_state()
    f.set_start(s)
    f.set_final(t)
    for label, weight in items:
        f.add_arc(s, pynini.Arc(label, label, pynini.Weight("log", weight), t))
    return f


class IntentFst:
    """The compiled acceptor of one intent grammar with sampling, enumeration and counting."""

    def __init__(self, grammar: IntentGrammar, table: _LabelTable) -> None:
        self.intent = grammar.intent
        self.table = table
        built: dict[Symbol, pynini.Fst] = {}
        for slot in grammar.slot_values:
            probs = grammar.slot_probabilities(slot)
            built[SlotRef(slot)] = _single_arc_union(
                [(table.id(Label(v, slot)), -math.log(p)) for v, p in probs.items()]
            )
        for nt in grammar.topological_order():
            alternatives = []
            for rhs, p in grammar.probabilities(nt).items():
                parts = [built[s] if not isinstance(s, str) else self._word(s, built) for s in rhs]
                seq = pynini.Fst(arc_type="log") if not parts else parts[0].copy()
                if not parts:
                    seq.set_start(seq.add_state())
                    seq.set_final(seq.start())
                for part in parts[1:]:
                    seq.concat(part)
                alternatives.append(seq.rmepsilon() if len(parts) > 1 else seq)
                alternatives[-1] = pynini.concat(_single_arc_union([(_EPS, -math.log(p))]), alternatives[-1])
            built[nt] = pynini.union(*alternatives).rmepsilon()
        self.fst: pynini.Fst = built[grammar.start].arcsort()
        self.word_labels = [i for i, lab in enumerate(table.labels) if i and lab.slot is None]
        self._spelling: list[tuple[str, str | None, bool]] = []

    def _word(self, word: str, built: dict[Symbol, pynini.Fst]) -> pynini.Fst:
        key = Nonterminal("\0" + word)
        if key not in built:
            built[key] = _single_arc_union([(self.table.id(Label(word)), 0.0)])
        return built[key]

    def utterance(self, labels: Sequence[int]) -> Utterance:
        """The annotated utterance a label sequence spells."""
        if len(self._spelling) < len(self.table.labels):
            self._spelling = [
                (lab.text, lab.slot, lab.slot is None and is_glued(lab.text)) for lab in self.table.labels
            ]
        parts: list[str] = []
        spans: list[SlotSpan] = []
        length = 0
        for i in labels:
            text, slot, glued = self._spelling[i]
            if parts and not glued:
                parts.append(" ")
                length += 1
            if slot is not None:
                spans.append(SlotSpan(length, length + len(text), slot))
            parts.append(text)
            length += len(text)
        return Utterance("".join(parts), self.intent, tuple(spans))

    def _paths(self, fst: pynini.Fst) -> Iterator[list[int]]:
        it = fst.paths()
        while not it.done():
            yield it.ilabels()
            it.next()

    def pattern_filter(self, pattern: Sequence[str]) -> pynini.Fst:
        """An acceptor of the label sequences whose pattern (see :meth:`Utterance.pattern`) is ``pattern``."""
        f = pynini.Fst(arc_type="log")
        state = f.add_state()
        f.set_start(state)
        for element in pattern:
            nxt = f.add_state()
            if element == "other":
                for label in self.word_labels:
                    f.add_arc(state, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
                    f.add_arc(nxt, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
            else:
                for label, lab in enumerate(self.table.labels):
                    if lab.slot == element:
                        f.add_arc(state, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
            state = nxt
        f.set_final(state)
        return f.arcsort()

    def restricted(self, pattern: Sequence[str] | None) -> pynini.Fst:
        """The acceptor restricted to ``pattern`` (all of it for ``None``), weights pushed to be stochastic."""
        if pattern is None:
            return self.fst
        out = pynini.intersect(self.fst, self.pattern_filter(pattern)).connect()
        if out.start() == pynini.NO_STATE_ID:
            raise ConfigError(f"the grammar of intent '{self.intent}' cannot produce pattern {' + '.join(pattern)}")
        return pynini.push(out, push_weights=True, reweight_type="to_initial")

    def sample(self, n: int, seed: int, pattern: Sequence[str] | None = None) -> list[Utterance]:
        """``n`` sentences drawn from the grammar's distribution (conditioned on ``pattern`` when given), in
        random order (:func:`pynini.randgen` returns them sorted by path)."""
        if n <= 0:
            return []
        fst = self.restricted(pattern)
        sampled = pynini.randgen(fst, npath=n, seed=seed, select="fast_log_prob")
        decoded: dict[tuple[int, ...], Utterance] = {}
        paths = [tuple(p) for p in self._paths(sampled)]
        for p in paths:
            if p not in decoded:
                decoded[p] = self.utterance(p)
        order = np.random.default_rng(seed).permutation(len(paths))
        return [decoded[paths[i]] for i in order]

    def unique(self, pattern: Sequence[str] | None = None) -> pynini.Fst:
        """The deterministic (one path per distinct annotated sentence) acceptor."""
        fst = self.restricted(pattern)
        unweighted = pynini.arcmap(fst, map_type="rmweight")
        return pynini.determinize(unweighted).minimize()

    def enumerate(self, limit: int | None = None, pattern: Sequence[str] | None = None) -> Iterator[Utterance]:
        """Distinct annotated sentences (up to ``limit``)."""
        for k, labels in enumerate(self._paths(self.unique(pattern))):
            if limit is not None and k >= limit:
                return
            yield self.utterance(labels)

    def count(self, pattern: Sequence[str] | None = None) -> int:
        """The number of distinct annotated sentences: paths of :meth:`unique`, counted over a topological order."""
        fst = self.unique(pattern).topsort()
        paths = [0] * fst.num_states()
        zero = pynini.Weight.zero(fst.weight_type())
        for state in reversed(range(fst.num_states())):
            total = 1 if fst.final(state) != zero else 0
            total += sum(paths[arc.nextstate] for arc in fst.arcs(state))
            paths[state] = total
        return paths[fst.start()] if fst.num_states() else 0


class GrammarFst:
    """The compiled acceptors of all intents of a :class:`Grammar` (sharing one label table)."""

    def __init__(self, grammar: Grammar) -> None:
        self.table = _LabelTable()
        self.intents = {name: IntentFst(g, self.table) for name, g in grammar.intents.items()}

    def __getitem__(self, intent: str) -> IntentFst:
        if intent not in self.intents:
            raise ConfigError(f"no grammar for intent '{intent}' (have: {', '.join(sorted(self.intents))})")
        return self.intents[intent]

    def sample(self, counts: dict[str, int], seed: int) -> list[Utterance]:
        """``counts[intent]`` sentences per intent."""
        return [u for k, (intent, n) in enumerate(sorted(counts.items())) for u in self[intent].sample(n, seed + k)]

    def count(self) -> dict[str, int]:
        """Distinct annotated sentences per intent."""
        return {name: f.count() for name, f in self.intents.items()}
