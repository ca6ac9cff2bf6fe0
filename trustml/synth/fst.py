"""Sampling, counting and enumerating the sentences of an intent grammar, with memory bounded by the grammar.

A grammar with nonterminals used in many places spells a finite language whose flat acceptor (every use of a
nonterminal replaced by a copy of its machine) can be exponentially larger than the grammar: 2,000 SNIPS
PlayMusic utterances induce 2,559 rules whose flat acceptor would have 4.2e8 arcs (the former ``pynini`` compile
step ran out of memory on it, and determinizing it for counting is worse). So nothing here flattens a large
grammar:

- **Sampling** is ancestral sampling on the grammar itself: a nonterminal ``A`` rewrites to ``rhs`` with
  ``P(rhs | A) = c(A -> rhs) / c(A)`` and a slot to a value with ``P(value | slot)``, so a sentence is drawn with
  its derivation probability, as from the weighted acceptor. **Sampling conditioned on a semantic pattern**
  (the slot names in order, each run of carrier words as ``other``) uses the inside probabilities of the
  grammar intersected with the pattern's deterministic automaton (Bar-Hillel construction, never built): for
  automaton states ``i, j``, ``I_A[i, j] = sum_rhs P(rhs | A) prod_k M_{rhs_k}[i, j]`` (matrix product over the
  right-hand side; ``M_w`` of a word or slot is its transition matrix), computed once per pattern in
  topological order at cost ``O(|G| K^3)`` for ``K = len(pattern) + 1`` states. A production is then chosen with
  probability ``P(rhs | A) [prod_k M_{rhs_k}]_{ij} / I_A[i, j]`` and the states between its symbols from the
  suffix products, which draws exactly from the conditional distribution ``P(sentence | pattern)``.
- **Counting** on the grammar: the number of derivations (per pattern, the same dynamic program over counts)
  needs no machine. The number of *distinct* annotated sentences needs the determinized acceptor
  (``pynini``), which is built only when the flat acceptor has at most ``max_arcs`` arcs (its size is computed
  on the grammar first: ``arcs(A) = sum_rhs sum_k arcs(rhs_k)``, a slot counting its values); above that,
  :meth:`IntentFst.count` returns the derivation count, an upper bound, and :meth:`IntentFst.count_is_exact`
  says so.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from trustml.errors import ConfigError
from trustml.synth.annotation import SlotSpan, Utterance
from trustml.synth.grammar import Grammar, IntentGrammar, Nonterminal, SlotRef, Symbol
from trustml.synth.words import is_glued

_EPS = 0
MAX_ARCS = 1_000_000
"""Default bound on the flat acceptor's arcs for exact distinct counting and enumeration."""


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


def flat_arcs(grammar: IntentGrammar) -> int:
    """Arcs of the flat acceptor of ``grammar`` (every nonterminal use expanded), computed on the grammar."""
    size: dict[Nonterminal, int] = {}
    for nt in grammar.topological_order():
        size[nt] = sum(
            sum(
                size[s]
                if isinstance(s, Nonterminal)
                else len(grammar.slot_values[s.slot])
                if isinstance(s, SlotRef)
                else 1
                for s in rhs
            )
            for rhs in grammar.rules[nt]
        )
    return size[grammar.start]


def _pynini():  # noqa: ANN202 - the pynini module
    """``pynini``, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import pynini
    except ImportError as exc:
        raise ConfigError(
            "exact distinct-sentence counts and enumeration need pynini: pip install 'trustml[synth]' "
            "(sampling and derivation counts work without it)"
        ) from exc
    return pynini


def has_pynini() -> bool:
    """Whether ``pynini`` is importable."""
    try:
        import pynini  # noqa: F401
    except ImportError:
        return False
    return True


class _Pattern:
    """The deterministic automaton of a semantic pattern: states ``0..m``; a word moves ``i -> i + 1`` when
    ``pattern[i] == 'other'`` and stays at ``i`` when ``pattern[i - 1] == 'other'``; slot ``s`` moves
    ``i -> i + 1`` when ``pattern[i] == s``; ``m`` is final."""

    def __init__(self, pattern: Sequence[str]) -> None:
        self.pattern = tuple(pattern)
        self.k = len(self.pattern) + 1
        self._matrices: dict[str | None, np.ndarray] = {}

    def matrix(self, slot: str | None) -> np.ndarray:
        """The 0/1 transition matrix of a word (``slot=None``) or of a value of ``slot``."""
        if slot not in self._matrices:
            m = np.zeros((self.k, self.k))
            for i in range(self.k):
                if slot is None:
                    if i > 0 and self.pattern[i - 1] == "other":
                        m[i, i] = 1.0
                    elif i < self.k - 1 and self.pattern[i] == "other":
                        m[i, i + 1] = 1.0
                elif i < self.k - 1 and self.pattern[i] == slot:
                    m[i, i + 1] = 1.0
            self._matrices[slot] = m
        return self._matrices[slot]


class _Inside:
    """Inside probabilities ``I_A`` of every nonterminal for one pattern, and per production its product
    ``prod_k M_{rhs_k}`` and suffix products (for drawing the states between the symbols)."""

    def __init__(self, sampler: _Sampler, pattern: _Pattern) -> None:
        self.pattern = pattern
        self.inside: dict[int, np.ndarray] = {}
        self.suffixes: dict[int, list[list[np.ndarray]]] = {}
        eye = np.eye(pattern.k)
        for a in sampler.order:
            total = np.zeros((pattern.k, pattern.k))
            suffix_lists = []
            for rhs, p in zip(sampler.rhs[a], sampler.probs[a], strict=True):
                suffix = [eye]
                for kind, value in reversed(rhs):
                    suffix.append(self.symbol(kind, value) @ suffix[-1])
                suffix.reverse()  # suffix[k] = product of rhs[k:]
                suffix_lists.append(suffix)
                total += p * suffix[0]
            self.inside[a] = total
            self.suffixes[a] = suffix_lists

    def symbol(self, kind: int, value: int | str) -> np.ndarray:
        if kind == _Sampler.NT:
            return self.inside[value]  # type: ignore[index]
        return self.pattern.matrix(value if kind == _Sampler.SLOT else None)  # type: ignore[arg-type]


class _Sampler:
    """The grammar in arrays for ancestral sampling: per nonterminal its productions and cumulative
    probabilities, per slot its values (label ids) and cumulative probabilities."""

    WORD, SLOT, NT = 0, 1, 2

    def __init__(self, grammar: IntentGrammar, table: _LabelTable) -> None:
        order = grammar.topological_order()
        index = {nt: k for k, nt in enumerate(order)}
        self.start = index[grammar.start]
        self.order = list(range(len(order)))
        self.rhs: list[list[tuple[tuple[int, int | str], ...]]] = []
        self.probs: list[list[float]] = []
        self.cum: list[list[float]] = []
        for nt in order:
            probs = grammar.probabilities(nt)
            self.rhs.append([tuple(self._symbol(s, index, table) for s in rhs) for rhs in probs])
            self.probs.append(list(probs.values()))
            self.cum.append(list(itertools.accumulate(probs.values())))
        self.values: dict[str, list[int]] = {}
        self.value_cum: dict[str, list[float]] = {}
        for slot in grammar.slot_values:
            probs = grammar.slot_probabilities(slot)
            self.values[slot] = [table.id(Label(v, slot)) for v in probs]
            self.value_cum[slot] = list(itertools.accumulate(probs.values()))
        self._inside: dict[tuple[str, ...], _Inside] = {}

    @classmethod
    def _symbol(cls, s: Symbol, index: dict[Nonterminal, int], table: _LabelTable) -> tuple[int, int | str]:
        if isinstance(s, Nonterminal):
            return cls.NT, index[s]
        if isinstance(s, SlotRef):
            return cls.SLOT, s.slot
        return cls.WORD, table.id(Label(s))

    @staticmethod
    def _pick(cum: list[float], rng: random.Random) -> int:
        return min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)

    def draw(self, rng: random.Random) -> list[int]:
        """One sentence (label ids) drawn with its derivation probability."""
        out: list[int] = []
        stack: list[tuple[int, int | str]] = [(self.NT, self.start)]
        while stack:
            kind, value = stack.pop()
            if kind == self.WORD:
                out.append(value)  # type: ignore[arg-type]
            elif kind == self.SLOT:
                out.append(self.values[value][self._pick(self.value_cum[value], rng)])  # type: ignore[index]
            else:
                rhs = self.rhs[value][self._pick(self.cum[value], rng)]  # type: ignore[index]
                stack.extend(reversed(rhs))
        return out

    def inside(self, pattern: Sequence[str]) -> _Inside:
        key = tuple(pattern)
        if key not in self._inside:
            self._inside[key] = _Inside(self, _Pattern(key))
        return self._inside[key]

    def draw_conditioned(self, inside: _Inside, rng: random.Random) -> list[int]:
        """One sentence drawn from ``P(sentence | pattern)`` (see the module doc)."""
        out: list[int] = []
        stack: list[tuple[int, int | str, int, int]] = [(self.NT, self.start, 0, inside.pattern.k - 1)]
        while stack:
            kind, value, i, j = stack.pop()
            if kind == self.WORD:
                out.append(value)  # type: ignore[arg-type]
            elif kind == self.SLOT:
                out.append(self.values[value][self._pick(self.value_cum[value], rng)])  # type: ignore[index]
            else:
                suffixes = inside.suffixes[value]  # type: ignore[index]
                weights = [p * suf[0][i, j] for p, suf in zip(self.probs[value], suffixes, strict=True)]  # type: ignore[index]
                r = self._pick(list(itertools.accumulate(weights)), rng)
                rhs, suffix = self.rhs[value][r], suffixes[r]  # type: ignore[index]
                parts = []
                state = i
                for k, (sk, sv) in enumerate(rhs):
                    m = inside.symbol(sk, sv)
                    w = m[state, :] * suffix[k + 1][:, j]
                    nxt = self._pick(list(itertools.accumulate(w.tolist())), rng)
                    parts.append((sk, sv, state, nxt))
                    state = nxt
                stack.extend(reversed(parts))
        return out

    def derivations(self, pattern: Sequence[str] | None) -> int:
        """The number of derivations of the start symbol (with slot values), restricted to ``pattern``: the
        inside recursion over exact integer counts instead of probabilities."""
        automaton = _Pattern(pattern) if pattern is not None else None
        k = automaton.k if automaton is not None else 1
        leaves: dict[str | None, np.ndarray] = {}

        def leaf(slot: str | None) -> np.ndarray:
            if slot not in leaves:
                m = np.ones((1, 1), dtype=int) if automaton is None else automaton.matrix(slot).astype(int)
                leaves[slot] = m.astype(object) * (1 if slot is None else len(self.values[slot]))
            return leaves[slot]

        counts: dict[int, np.ndarray] = {}
        for a in self.order:
            total = np.zeros((k, k), dtype=int).astype(object)
            for rhs in self.rhs[a]:
                product = np.eye(k, dtype=int).astype(object)
                for kind, value in rhs:
                    m = counts[value] if kind == self.NT else leaf(value if kind == self.SLOT else None)  # type: ignore[index,arg-type]
                    product = product.dot(m)
                total = total + product
            counts[a] = total
        return int(counts[self.start][0, k - 1])


class IntentFst:
    """The sentences of one intent grammar: sampling and derivation counts on the grammar (bounded memory),
    exact distinct counts and enumeration on its ``pynini`` acceptor when that has at most ``max_arcs`` arcs."""

    def __init__(self, grammar: IntentGrammar, table: _LabelTable, max_arcs: int = MAX_ARCS) -> None:
        self.intent = grammar.intent
        self.grammar = grammar
        self.table = table
        self.max_arcs = max_arcs
        self.arcs = flat_arcs(grammar)
        self.sampler = _Sampler(grammar, table)
        self._fst = None
        self._spelling: list[tuple[str, str | None, bool]] = []

    @property
    def word_labels(self) -> list[int]:
        return [i for i, lab in enumerate(self.table.labels) if i and lab.slot is None]

    def count_is_exact(self) -> bool:
        """Whether :meth:`count` counts distinct sentences (flat acceptor within ``max_arcs`` and pynini installed)
        or derivations."""
        return self.arcs <= self.max_arcs and has_pynini()

    @property
    def fst(self):  # noqa: ANN201 - pynini.Fst (pynini is imported lazily)
        """The flat weighted acceptor (log semiring; arc weight ``-log`` probability), built on first use;
        a :class:`ConfigError` when it would exceed ``max_arcs`` arcs."""
        if self._fst is None:
            if self.arcs > self.max_arcs:
                raise ConfigError(
                    f"the grammar of intent '{self.intent}' spells a flat acceptor of {self.arcs:,} arcs, above "
                    f"max_arcs={self.max_arcs:,}: sample from it (sampling works on the grammar) or raise max_arcs"
                )
            self._fst = self._compile()
        return self._fst

    def _compile(self):  # noqa: ANN202
        pynini = _pynini()

        def single_arc_union(items: Sequence[tuple[int, float]]) -> pynini.Fst:
            f = pynini.Fst(arc_type="log")
            s, t = f.add_state(), f.add_state()
            f.set_start(s)
            f.set_final(t)
            for label, weight in items:
                f.add_arc(s, pynini.Arc(label, label, pynini.Weight("log", weight), t))
            return f

        built: dict[Symbol, pynini.Fst] = {}
        g = self.grammar
        for slot in g.slot_values:
            probs = g.slot_probabilities(slot)
            built[SlotRef(slot)] = single_arc_union(
                [(self.table.id(Label(v, slot)), -math.log(p)) for v, p in probs.items()]
            )
        for nt in g.topological_order():
            alternatives = []
            for rhs, p in g.probabilities(nt).items():
                parts = []
                for s in rhs:
                    if isinstance(s, str):
                        key = Nonterminal("\0" + s)
                        if key not in built:
                            built[key] = single_arc_union([(self.table.id(Label(s)), 0.0)])
                        s = key
                    parts.append(built[s])
                seq = pynini.Fst(arc_type="log") if not parts else parts[0].copy()
                if not parts:
                    seq.set_start(seq.add_state())
                    seq.set_final(seq.start())
                for part in parts[1:]:
                    seq.concat(part)
                seq = seq.rmepsilon() if len(parts) > 1 else seq
                alternatives.append(pynini.concat(single_arc_union([(_EPS, -math.log(p))]), seq))
            built[nt] = pynini.union(*alternatives).rmepsilon()
        return built[g.start].arcsort()

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

    def _check_pattern(self, pattern: Sequence[str]) -> None:
        if self.sampler.inside(pattern).inside[self.sampler.start][0, len(pattern)] <= 0:
            raise ConfigError(f"the grammar of intent '{self.intent}' cannot produce pattern {' + '.join(pattern)}")

    def sample(
        self, n: int, seed: int, pattern: Sequence[str] | None = None, progress: object | None = None
    ) -> list[Utterance]:
        """``n`` sentences drawn from the grammar's distribution (conditioned on ``pattern`` when given);
        ``progress`` (optional, with ``update(k)``) is told of every 1,000 sentences drawn."""
        if n <= 0:
            return []
        rng = random.Random(seed)
        inside = None
        if pattern is not None:
            self._check_pattern(pattern)
            inside = self.sampler.inside(pattern)
        decoded: dict[tuple[int, ...], Utterance] = {}
        out = []
        for k in range(n):
            labels = tuple(self.sampler.draw(rng) if inside is None else self.sampler.draw_conditioned(inside, rng))
            u = decoded.get(labels)
            if u is None:
                u = decoded[labels] = self.utterance(labels)
            out.append(u)
            if progress is not None and (k + 1) % 1000 == 0:
                progress.update(1000)  # type: ignore[attr-defined]
        if progress is not None and n % 1000:
            progress.update(n % 1000)  # type: ignore[attr-defined]
        return out

    def restricted(self, pattern: Sequence[str] | None):  # noqa: ANN201 - pynini.Fst
        """The flat acceptor restricted to ``pattern`` (all of it for ``None``), weights pushed to be stochastic."""
        pynini = _pynini()

        if pattern is None:
            return self.fst
        self._check_pattern(pattern)
        out = pynini.intersect(self.fst, self.pattern_filter(pattern)).connect()
        return pynini.push(out, push_weights=True, reweight_type="to_initial")

    def pattern_filter(self, pattern: Sequence[str]):  # noqa: ANN201 - pynini.Fst
        """An acceptor of the label sequences whose pattern (see :meth:`Utterance.pattern`) is ``pattern``."""
        pynini = _pynini()

        f = pynini.Fst(arc_type="log")
        state = f.add_state()
        f.set_start(state)
        words = self.word_labels
        for element in pattern:
            nxt = f.add_state()
            if element == "other":
                for label in words:
                    f.add_arc(state, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
                    f.add_arc(nxt, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
            else:
                for label, lab in enumerate(self.table.labels):
                    if lab.slot == element:
                        f.add_arc(state, pynini.Arc(label, label, pynini.Weight.one("log"), nxt))
            state = nxt
        f.set_final(state)
        return f.arcsort()

    def unique(self, pattern: Sequence[str] | None = None):  # noqa: ANN201 - pynini.Fst
        """The deterministic (one path per distinct annotated sentence) acceptor (flat: see ``max_arcs``)."""
        pynini = _pynini()

        fst = self.restricted(pattern)
        unweighted = pynini.arcmap(fst, map_type="rmweight")
        return pynini.determinize(unweighted).minimize()

    def enumerate(self, limit: int | None = None, pattern: Sequence[str] | None = None) -> Iterator[Utterance]:
        """Distinct annotated sentences (up to ``limit``); needs the flat acceptor (see ``max_arcs``)."""
        it = self.unique(pattern).paths()
        k = 0
        while not it.done():
            if limit is not None and k >= limit:
                return
            yield self.utterance(it.ilabels())
            it.next()
            k += 1

    def count(self, pattern: Sequence[str] | None = None) -> int:
        """Distinct annotated sentences (paths of :meth:`unique` over a topological order) when the flat acceptor
        has at most ``max_arcs`` arcs, else derivations counted on the grammar (an upper bound)."""
        if not self.count_is_exact():
            return self.sampler.derivations(pattern)
        pynini = _pynini()

        fst = self.unique(pattern).topsort()
        paths = [0] * fst.num_states()
        zero = pynini.Weight.zero(fst.weight_type())
        for state in reversed(range(fst.num_states())):
            total = 1 if fst.final(state) != zero else 0
            total += sum(paths[arc.nextstate] for arc in fst.arcs(state))
            paths[state] = total
        return paths[fst.start()] if fst.num_states() else 0


class GrammarFst:
    """The sentence machinery (:class:`IntentFst`) of all intents of a :class:`Grammar` (one label table)."""

    def __init__(self, grammar: Grammar, max_arcs: int = MAX_ARCS) -> None:
        self.table = _LabelTable()
        self.intents = {name: IntentFst(g, self.table, max_arcs) for name, g in grammar.intents.items()}

    def __getitem__(self, intent: str) -> IntentFst:
        if intent not in self.intents:
            raise ConfigError(f"no grammar for intent '{intent}' (have: {', '.join(sorted(self.intents))})")
        return self.intents[intent]

    def sample(self, counts: dict[str, int], seed: int, progress: object | None = None) -> list[Utterance]:
        """``counts[intent]`` sentences per intent."""
        return [
            u
            for k, (intent, n) in enumerate(sorted(counts.items()))
            for u in self[intent].sample(n, seed + k, progress=progress)
        ]

    def count(self) -> dict[str, int]:
        """Distinct annotated sentences per intent (derivations where the flat acceptor exceeds ``max_arcs``)."""
        return {name: f.count() for name, f in self.intents.items()}

    def count_report(self) -> dict[str, dict[str, int | bool]]:
        """Per intent: ``sentences`` (see :meth:`count`), ``exact`` (distinct, not derivations) and ``flat_arcs``."""
        return {
            name: {"sentences": f.count(), "exact": f.count_is_exact(), "flat_arcs": f.arcs}
            for name, f in self.intents.items()
        }
