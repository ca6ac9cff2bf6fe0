"""Grammar induction by Bayesian model merging (Stolcke & Omohundro 1994, "Inducing probabilistic grammars
by Bayesian model merging").

Data incorporation: each distinct utterance of an intent becomes one production of the intent's start
symbol, ``S -> X_play {genre} X_music``, with slots as nonterminals and every carrier word ``w`` wrapped
in a lexical nonterminal ``X_w -> w``. Production counts are Viterbi counts.

Operators:

- ``merge(A, B)``: replace ``B`` by ``A`` everywhere and pool their productions; productions that become
  identical collapse (their counts add) - this is how the grammar generalizes.
- ``chunk(Y1 ... Yn)``: introduce ``C -> Y1 ... Yn`` and replace the sequence by ``C`` (or reuse an
  existing ``C`` whose only production is that sequence).

Posterior (in nats): ``log P(M | D) = log P(D | M) + lambda * log P(M)`` up to a constant, with the
Viterbi likelihood ``log P(D | M) = sum_A sum_rhs c(A -> rhs) log(c(A -> rhs) / c(A))`` and the
description-length prior ``log P(M) = -DL(M)``, ``DL(M) = sum_{A -> rhs} (|rhs| + 1) log |V|`` (each
production spelled as its symbols, ``|V|`` = nonterminals + words + slots + 1 end marker). ``lambda``
(``prior_weight``) sets how far the grammar generalizes. Search is greedy (best operation per step) or a
beam; it stops when no operation improves the posterior. Ties are broken by a seeded random order, so a
seed fixes the result. Merges that would make the grammar recursive are not considered, so the language
stays finite.

The greedy search (:class:`_Greedy`) keeps its candidate index and every candidate's score change up to date
incrementally, so a step costs what the operation changes rather than the size of the grammar (thousands of
utterances per intent in seconds); it scores exactly as the from-scratch computation of the beam search
(``_Inducer._candidates``), and breaks exact ties by a seeded hash of the operation. It stops at convergence
(no operation gains more than ``min_gain``), at ``max_steps``, or at a time or memory budget, keeping the best
grammar reached (the search only ever raises the posterior).
"""

from __future__ import annotations

import heapq
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustml.errors import ConfigError
from trustml.synth.annotation import Utterance
from trustml.synth.grammar import Grammar, IntentGrammar, Nonterminal, Rules, SlotRef, Symbol
from trustml.synth.words import carrier_words

_WORD, _SLOT, _NT = 0, 1, 2

RuleSet = dict[int, dict[tuple[int, ...], int]]


@dataclass(frozen=True)
class InductionConfig:
    """Knobs of :func:`induce_grammar`.

    ``prior_weight``: ``lambda`` on the description-length prior (larger generalizes more);
    ``search``: ``"greedy"`` or ``"beam"`` with ``beam_width`` states; ``max_chunk``: longest symbol
    sequence one chunk operation introduces; ``chunk_candidates``: how many chunks (best by their
    description-length gain) are scored exactly per step; ``lowercase``: lowercase carrier words;
    ``max_steps``: a safety bound on the number of operations; ``seed``: tie-breaking order;
    ``min_gain``: stop when the best operation raises the log posterior by at most this many nats (a
    description-length stop: larger values stop earlier on large inputs); ``time_budget_s`` /
    ``memory_budget_mb``: stop the search of an intent when it has run that long or the process holds that much
    resident memory, keeping the grammar reached so far (the search only ever improves it), and record why in
    :class:`InductionTrace` (0 = no bound).
    """

    prior_weight: float = 1.0
    search: str = "greedy"
    beam_width: int = 3
    max_chunk: int = 4
    chunk_candidates: int = 8
    lowercase: bool = True
    max_steps: int = 5000
    seed: int = 0
    min_gain: float = 1e-9
    time_budget_s: float = 0.0
    memory_budget_mb: float = 0.0

    def __post_init__(self) -> None:
        if self.search not in ("greedy", "beam"):
            raise ConfigError(f"induction.search must be 'greedy' or 'beam', got '{self.search}'")
        if self.prior_weight < 0:
            raise ConfigError(f"induction.prior_weight must be >= 0, got {self.prior_weight}")
        if self.beam_width < 1 or self.max_chunk < 2 or self.chunk_candidates < 0 or self.max_steps < 0:
            raise ConfigError(
                f"induction needs beam_width >= 1, max_chunk >= 2, chunk_candidates >= 0, max_steps >= 0 (got {self})"
            )
        if self.min_gain < 0 or self.time_budget_s < 0 or self.memory_budget_mb < 0:
            raise ConfigError(
                "induction.min_gain, induction.time_budget_s and induction.memory_budget_mb must be >= 0 "
                f"(0 = no bound), got {self.min_gain}, {self.time_budget_s}, {self.memory_budget_mb}"
            )


@dataclass(frozen=True)
class InductionTrace:
    """What the search did for one intent: operations applied, the posterior before and after, why it stopped
    (``converged``, ``max_steps``, ``time_budget``, ``memory_budget``;
    a budget stop keeps the best grammar reached so far) and its time."""

    intent: str
    merges: int
    chunks: int
    log_posterior_start: float
    log_posterior_end: float
    log_likelihood_end: float
    description_length_end: float
    utterances: int = 0
    stopped: str = "converged"
    seconds: float = 0.0


def _xlogx(c: float) -> float:
    return c * math.log(c) if c > 0 else 0.0


def _rule_ll(rs: Mapping[tuple[int, ...], int]) -> float:
    """``sum_rhs c log(c / C)`` for one nonterminal's productions."""
    return sum(_xlogx(c) for c in rs.values()) - _xlogx(sum(rs.values()))


def _rule_units(rs: Mapping[tuple[int, ...], int]) -> int:
    return sum(len(rhs) + 1 for rhs in rs)


class _State:
    """One grammar in the search: rules by lhs id plus cached per-lhs likelihood and size."""

    __slots__ = ("rules", "ll", "units", "total_ll", "total_units", "merges", "chunks")

    def __init__(self, rules: RuleSet, merges: int = 0, chunks: int = 0) -> None:
        self.rules = rules
        self.ll = {lhs: _rule_ll(rs) for lhs, rs in rules.items()}
        self.units = {lhs: _rule_units(rs) for lhs, rs in rules.items()}
        self.total_ll = sum(self.ll.values())
        self.total_units = sum(self.units.values())
        self.merges = merges
        self.chunks = chunks

    def apply(self, change: dict[int, dict[tuple[int, ...], int] | None], merge: bool) -> _State:
        """A new state with the lhs in ``change`` replaced (``None`` deletes); unchanged rules are shared."""
        new = object.__new__(_State)
        new.rules, new.ll, new.units = dict(self.rules), dict(self.ll), dict(self.units)
        new.total_ll, new.total_units = self.total_ll, self.total_units
        for lhs, rs in change.items():
            new.total_ll -= new.ll.pop(lhs, 0.0)
            new.total_units -= new.units.pop(lhs, 0)
            new.rules.pop(lhs, None)
            if rs is not None:
                new.rules[lhs] = rs
                new.ll[lhs], new.units[lhs] = _rule_ll(rs), _rule_units(rs)
                new.total_ll += new.ll[lhs]
                new.total_units += new.units[lhs]
        new.merges = self.merges + merge
        new.chunks = self.chunks + (not merge)
        return new


class _Inducer:
    """Bayesian model merging for the utterances of one intent."""

    def __init__(self, utterances: Sequence[Utterance], config: InductionConfig) -> None:
        self.config = config
        self.names: list[str] = []
        self.kinds: list[int] = []
        self.ids: dict[tuple[int, str], int] = {}
        self.start = self._symbol(_NT, "<start>")
        self.slot_values: dict[str, dict[str, float]] = {}
        top: dict[tuple[int, ...], int] = {}
        lexical: RuleSet = {}
        for u in utterances:
            rhs = []
            for token in _segments(u, config.lowercase):
                if isinstance(token, SlotRef):
                    rhs.append(self._symbol(_SLOT, token.slot))
                else:
                    word = self._symbol(_WORD, token)
                    lex = self._symbol(_NT, f"X_{token}")
                    lexical[lex] = {(word,): lexical.get(lex, {}).get((word,), 0) + 1}
                    rhs.append(lex)
            top[tuple(rhs)] = top.get(tuple(rhs), 0) + 1
            for slot, value in u.slot_values():
                values = self.slot_values.setdefault(slot, {})
                values[value] = values.get(value, 0) + 1
        self.fixed_symbols = sum(1 for k in self.kinds if k != _NT) + 1
        self.rng = random.Random(config.seed)
        self.state = _State({self.start: top, **lexical})

    def _symbol(self, kind: int, name: str) -> int:
        key = (kind, name)
        if key not in self.ids:
            self.ids[key] = len(self.names)
            self.names.append(name)
            self.kinds.append(kind)
        return self.ids[key]

    def _new_nonterminal(self) -> int:
        self.names.append(f"C{len(self.names)}")
        self.kinds.append(_NT)
        return len(self.names) - 1

    def score(self, state: _State) -> float:
        """``log P(D|M) - lambda * DL(M)``."""
        return state.total_ll - self.config.prior_weight * state.total_units * math.log(
            self.fixed_symbols + len(state.rules)
        )

    def description_length(self, state: _State) -> float:
        return state.total_units * math.log(self.fixed_symbols + len(state.rules))

    # -- candidates -------------------------------------------------------------------------------------

    def _candidates(self, state: _State) -> list[tuple[float, float, tuple]]:
        """``(score delta, tie-break, operation)`` for every merge that collapses a production and the best
        chunks, sorted best first."""
        parents: dict[int, list[int]] = defaultdict(list)
        buckets: dict[tuple, list[int]] = defaultdict(list)
        frames: dict[tuple[int, int], list[int]] = defaultdict(list)
        ngrams: dict[tuple[int, ...], int] = defaultdict(int)
        for lhs, rs in state.rules.items():
            for rhs in rs:
                for sym in set(rhs):
                    if self.kinds[sym] == _NT:
                        parents[sym].append(lhs)
                if self.kinds[rhs[0]] == _WORD:
                    continue
                for i, sym in enumerate(rhs):
                    if self.kinds[sym] == _NT:
                        buckets[(lhs, rhs[:i], rhs[i + 1 :])].append(sym)
                        frames[(rhs[i - 1] if i else -1, rhs[i + 1] if i + 1 < len(rhs) else -1)].append(sym)
                    for n in range(2, min(self.config.max_chunk, len(rhs) - i) + 1):
                        ngrams[rhs[i : i + n]] += 1
        pairs: set[tuple[int, int]] = set()
        for syms in (*buckets.values(), *frames.values()):
            distinct = sorted(set(syms))
            pairs.update((a, b) for k, a in enumerate(distinct) for b in distinct[k + 1 :])
        signatures: dict[frozenset, list[int]] = defaultdict(list)
        for lhs, rs in state.rules.items():
            if lhs != self.start:
                signatures[frozenset(rs)].append(lhs)
        for same in signatures.values():
            pairs.update((a, b) for k, a in enumerate(same) for b in same[k + 1 :])
        reach = _Reachability(state.rules)
        out = []
        for a, b in sorted(pairs):
            if a == self.start or b == self.start or reach.reaches(a, b) or reach.reaches(b, a):
                continue
            out.append((self._merge_delta(state, parents, a, b), self.rng.random(), ("merge", a, b)))
        for seq in self._chunk_shortlist(state, ngrams):
            out.append((self._chunk_delta(state, seq), self.rng.random(), ("chunk", seq)))
        out.sort(key=lambda t: (-t[0], t[1]))
        return out

    def _chunk_shortlist(self, state: _State, ngrams: dict[tuple[int, ...], int]) -> list[tuple[int, ...]]:
        """The n-grams whose chunking saves the most symbols (estimate ``(n - 1) k - (n + 1)``)."""
        gains = [((len(seq) - 1) * k - (len(seq) + 1), seq) for seq, k in ngrams.items() if k >= 2]
        gains = [g for g in gains if g[0] > 0]
        gains.sort(key=lambda g: (-g[0], g[1]))
        return [seq for _, seq in gains[: self.config.chunk_candidates]]

    def _delta_score(self, state: _State, d_ll: float, d_units: int, d_symbols: int) -> float:
        v = self.fixed_symbols + len(state.rules)
        lam = self.config.prior_weight
        old = state.total_units * math.log(v)
        new = (state.total_units + d_units) * math.log(v + d_symbols)
        return d_ll - lam * (new - old)

    # -- merge ------------------------------------------------------------------------------------------

    def _merge_delta(self, state: _State, parents: dict[int, list[int]], a: int, b: int) -> float:
        keep, drop = (a, b) if a < b else (b, a)
        d_ll, d_units = 0.0, 0
        merged = dict(state.rules[keep])
        for rhs, c in state.rules[drop].items():
            merged[rhs] = merged.get(rhs, 0) + c
        d_ll += _rule_ll(merged) - state.ll[keep] - state.ll[drop]
        d_units += _rule_units(merged) - state.units[keep] - state.units[drop]
        for p in dict.fromkeys(parents[drop]):
            rs = state.rules[p]
            moved: dict[tuple[int, ...], int] = {}
            removed_ll, removed_units = 0.0, 0
            for rhs, c in rs.items():
                if drop in rhs:
                    removed_ll += _xlogx(c)
                    removed_units += len(rhs) + 1
                    new = tuple(keep if s == drop else s for s in rhs)
                    moved[new] = moved.get(new, 0) + c
            for new, c in moved.items():
                old = rs.get(new, 0)
                if old:
                    removed_ll += _xlogx(old)
                    removed_units += len(new) + 1
                d_ll += _xlogx(c + old)
                d_units += len(new) + 1
            d_ll -= removed_ll
            d_units -= removed_units
        return self._delta_score(state, d_ll, d_units, -1)

    def _merge_change(self, state: _State, a: int, b: int) -> dict[int, dict[tuple[int, ...], int] | None]:
        keep, drop = (a, b) if a < b else (b, a)
        merged = dict(state.rules[keep])
        for rhs, c in state.rules[drop].items():
            merged[rhs] = merged.get(rhs, 0) + c
        change: dict[int, dict[tuple[int, ...], int] | None] = {keep: merged, drop: None}
        for lhs, rs in state.rules.items():
            if lhs in change or not any(drop in rhs for rhs in rs):
                continue
            new_rs: dict[tuple[int, ...], int] = {}
            for rhs, c in rs.items():
                new = tuple(keep if s == drop else s for s in rhs) if drop in rhs else rhs
                new_rs[new] = new_rs.get(new, 0) + c
            change[lhs] = new_rs
        return change

    # -- chunk ------------------------------------------------------------------------------------------

    def _chunk_target(self, state: _State, seq: tuple[int, ...]) -> int | None:
        """An existing nonterminal whose only production is ``seq`` (reused instead of a new one)."""
        for lhs, rs in state.rules.items():
            if lhs != self.start and len(rs) == 1 and seq in rs:
                return lhs
        return None

    def _chunk_rules(self, state: _State, seq: tuple[int, ...], name: int) -> tuple[dict, int]:
        change: dict[int, dict[tuple[int, ...], int] | None] = {}
        total = 0
        for lhs, rs in state.rules.items():
            if lhs == name:
                continue
            new_rs: dict[tuple[int, ...], int] = {}
            touched = False
            for rhs, c in rs.items():
                new, k = _replace(rhs, seq, name)
                touched |= k > 0
                total += c * k
                new_rs[new] = new_rs.get(new, 0) + c
            if touched:
                change[lhs] = new_rs
        return change, total

    def _chunk_delta(self, state: _State, seq: tuple[int, ...]) -> float:
        existing = self._chunk_target(state, seq)
        name = existing if existing is not None else -1
        change, total = self._chunk_rules(state, seq, name)
        d_ll = sum(_rule_ll(rs) - state.ll[lhs] for lhs, rs in change.items() if rs is not None)
        d_units = sum(_rule_units(rs) - state.units[lhs] for lhs, rs in change.items() if rs is not None)
        if existing is None:
            d_units += len(seq) + 1
        return self._delta_score(state, d_ll, d_units, 0 if existing is not None else 1)

    def _chunk_change(self, state: _State, seq: tuple[int, ...]) -> dict[int, dict[tuple[int, ...], int] | None]:
        existing = self._chunk_target(state, seq)
        name = existing if existing is not None else self._new_nonterminal()
        change, total = self._chunk_rules(state, seq, name)
        old = state.rules.get(name, {}).get(seq, 0)
        change[name] = {seq: old + total}
        return change

    def _apply(self, state: _State, op: tuple) -> _State:
        if op[0] == "merge":
            return state.apply(self._merge_change(state, op[1], op[2]), merge=True)
        return state.apply(self._chunk_change(state, op[1]), merge=False)

    # -- search -----------------------------------------------------------------------------------------

    def run(self, progress: Any = None) -> tuple[_State, str]:
        """Greedy (:class:`_Greedy`) or beam search until no operation improves the posterior by more than
        ``min_gain`` (or a bound); the final state and why the search stopped."""
        budget = _Budget(self.config.time_budget_s, self.config.memory_budget_mb)
        if self.config.search == "greedy":
            greedy = _Greedy(self, budget, progress)
            return greedy.run(), greedy.stopped
        state = self.state
        beam, best = [state], state
        stopped = "max_steps"
        for _ in range(self.config.max_steps):
            reason = budget.exceeded()
            if reason:
                stopped = reason
                break
            children: list[tuple[float, float, _State]] = []
            for s in beam:
                base = self.score(s)
                for delta, tie, op in self._candidates(s)[: self.config.beam_width]:
                    if delta > self.config.min_gain:
                        children.append((base + delta, tie, self._apply(s, op)))
            if not children:
                stopped = "converged"
                break
            children.sort(key=lambda t: (-t[0], t[1]))
            seen: set[float] = set()
            beam = []
            for score, _, child in children:
                key = round(score, 6)
                if key not in seen:
                    seen.add(key)
                    beam.append(child)
                if len(beam) == self.config.beam_width:
                    break
            if self.score(beam[0]) > self.score(best):
                best = beam[0]
        return best, stopped

    def to_grammar(self, intent: str, state: _State) -> IntentGrammar:
        """The :class:`IntentGrammar` of ``state``: start ``S``, the others ``n1, n2, ...`` in creation order."""
        names = {self.start: Nonterminal("S")}
        for k, lhs in enumerate(sorted(lhs for lhs in state.rules if lhs != self.start), start=1):
            names[lhs] = Nonterminal(f"n{k}")

        def symbol(s: int) -> Symbol:
            if self.kinds[s] == _WORD:
                return self.names[s]
            if self.kinds[s] == _SLOT:
                return SlotRef(self.names[s])
            return names[s]

        rules: Rules = {
            names[lhs]: {tuple(symbol(s) for s in rhs): c for rhs, c in rs.items()} for lhs, rs in state.rules.items()
        }
        slot_values = {slot: dict(values) for slot, values in sorted(self.slot_values.items())}
        return IntentGrammar(intent, names[self.start], rules, slot_values)


class _Budget:
    """Stops a search at ``time_s`` seconds or ``memory_mb`` MB of resident memory (0 = no bound)."""

    def __init__(self, time_s: float, memory_mb: float) -> None:
        self.time_s, self.memory_mb = time_s, memory_mb
        self.t0 = time.perf_counter()

    def exceeded(self) -> str | None:
        """``"time_budget"`` or ``"memory_budget"`` when that bound is reached, else None."""
        if self.time_s and time.perf_counter() - self.t0 > self.time_s:
            return "time_budget"
        if self.memory_mb and resident_mb() > self.memory_mb:
            return "memory_budget"
        return None


def resident_mb() -> float:
    """The process's resident memory in MB (``/proc/self/statm``; the peak from ``getrusage`` elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tie(seed: int, key: tuple[int, ...]) -> float:
    """A deterministic pseudo-random tie-break in [0, 1) for an operation key and a seed."""
    h = seed * 0x9E3779B1 + 0x7F4A7C15
    for x in key:
        h = ((h ^ (x + 0x632BE5AB)) * 0x5BD1E995) & 0xFFFFFFFFFFFF
    return h / 2**48


class _Greedy:
    """Greedy best-first merging with incremental indices, so each step costs what it changes, not the grammar.

    Maintained across steps (updated per production added or removed):
    ``occ[sym]`` the productions whose right-hand side holds ``sym``; the candidate groups of nonterminals
    that share a context -- ``(lhs, prefix, suffix)`` of a right-hand side (a merge collapses productions),
    ``(left, right)`` neighbours (context signature) and identical production sets -- and the number of
    groups supporting each pair; the n-gram counts (chunk candidates) in a lazy max-heap by their
    description-length gain estimate; the production-local part ``(d_ll, d_units)`` of every candidate
    merge's score change. A merge's local part depends only on the productions of the two nonterminals and
    on the productions holding either of them, so after an operation only pairs with a symbol in a changed
    production are re-scored; the global part (``|V|`` and the grammar size) is applied to all pairs at
    once with numpy. A merge's cost is proportional to the occurrences of the dropped nonterminal
    (``occ``), not to the size of its parents.
    """

    def __init__(self, inducer: _Inducer, budget: _Budget, progress: Any = None) -> None:
        self.ind = inducer
        self.config = inducer.config
        self.kinds = inducer.kinds
        self.budget = budget
        self.progress = progress
        self.start = inducer.start
        self.rules: RuleSet = {}
        self.ll: dict[int, float] = {}
        self.units: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.total_ll = 0.0
        self.total_units = 0
        self.merges = self.chunks = 0
        self.occ: dict[int, dict[tuple[int, tuple[int, ...]], None]] = defaultdict(dict)
        self.groups: dict[tuple, dict[int, int]] = {}
        self.signature: dict[int, frozenset] = {}
        self.single: dict[tuple[int, ...], set[int]] = defaultdict(set)
        self.support: dict[tuple[int, int], int] = {}
        self.pairs_of: dict[int, set[tuple[int, int]]] = defaultdict(set)
        self.ngrams: dict[tuple[int, ...], int] = defaultdict(int)
        self.heap: list[tuple[int, tuple[int, ...]]] = []
        self.slot: dict[tuple[int, int], int] = {}
        self.free: list[int] = []
        self.pair_at: list[tuple[int, int] | None] = []
        size = 1024
        self.d_ll, self.d_units = np.zeros(size), np.zeros(size)
        self.alive, self.ties = np.zeros(size, dtype=bool), np.zeros(size)
        self.stale: set[tuple[int, int]] = set()
        self.shared: dict[tuple[int, int], set[tuple]] = {}
        self.co: dict[tuple[int, int], set[tuple[int, tuple[int, ...]]]] = {}
        self.multi: dict[int, set[tuple[int, tuple[int, ...]]]] = {}
        self.touched: set[tuple[int, ...]] = set()
        self.chunk_cache: dict[tuple[int, ...], tuple[float, int, int]] = {}
        self.dirty: set[int] = set()
        self.fresh: set[tuple[int, int]] = set()
        self.stopped = "converged"
        for lhs, rs in inducer.state.rules.items():
            self._set_rules(lhs, dict(rs))
        self._rescore()

    # -- indices ----------------------------------------------------------------------------------------

    def _pair_support(self, a: int, b: int, d: int) -> None:
        pair = (a, b) if a < b else (b, a)
        n = self.support.get(pair, 0) + d
        if n > 0:
            self.support[pair] = n
            if n == d:  # new pair
                self.pairs_of[a].add(pair)
                self.pairs_of[b].add(pair)
                self.fresh.add(pair)
            return
        self.support.pop(pair, None)
        self.pairs_of[a].discard(pair)
        self.pairs_of[b].discard(pair)
        self.fresh.discard(pair)
        k = self.slot.pop(pair, None)
        if k is not None:
            self.alive[k] = False
            self.pair_at[k] = None
            self.free.append(k)

    def _group(self, key: tuple, sym: int, d: int) -> None:
        group = self.groups.setdefault(key, {})
        c = group.get(sym, 0) + d
        if c == 0:
            del group[sym]
            for other in group:
                self._pair_support(sym, other, -1)
                if key[0] == 0:
                    self._relate(self.shared, sym, other, key, -1)
            if not group:
                del self.groups[key]
        else:
            if c == d:
                for other in group:
                    self._pair_support(sym, other, 1)
                    if key[0] == 0:
                        self._relate(self.shared, sym, other, key, 1)
            group[sym] = c

    @staticmethod
    def _relate(index: dict, a: int, b: int, item: Any, d: int) -> None:
        pair = (a, b) if a < b else (b, a)
        if d > 0:
            index.setdefault(pair, set()).add(item)
        else:
            items = index[pair]
            items.discard(item)
            if not items:
                del index[pair]

    def _index(self, lhs: int, rhs: tuple[int, ...], d: int) -> None:
        """Add (``d = 1``) or remove (``d = -1``) one production from every index."""
        if self.kinds[rhs[0]] == _WORD:
            return
        entry = (lhs, rhs)
        for sym in set(rhs):
            if d > 0:
                self.occ[sym][entry] = None
            else:
                del self.occ[sym][entry]
        nts = sorted({sym for sym in rhs if self.kinds[sym] == _NT})
        for k, a in enumerate(nts):
            for b in nts[k + 1 :]:
                self._relate(self.co, a, b, entry, d)
            if rhs.count(a) > 1:
                if d > 0:
                    self.multi.setdefault(a, set()).add(entry)
                else:
                    self.multi[a].discard(entry)
        n_max = self.config.max_chunk
        for i, sym in enumerate(rhs):
            if self.kinds[sym] == _NT:
                self._group((0, lhs, rhs[:i], rhs[i + 1 :]), sym, d)
                self._group((1, rhs[i - 1] if i else -1, rhs[i + 1] if i + 1 < len(rhs) else -1), sym, d)
            for n in range(2, min(n_max, len(rhs) - i) + 1):
                seq = rhs[i : i + n]
                k = self.ngrams[seq] + d
                if k:
                    self.ngrams[seq] = k
                    gain = (n - 1) * k - (n + 1)
                    if k >= 2 and gain > 0:
                        heapq.heappush(self.heap, (-gain, seq))
                else:
                    del self.ngrams[seq]

    def _set_rules(self, lhs: int, new: dict[tuple[int, ...], int] | None) -> None:
        """Replace the productions of ``lhs`` (``None`` deletes it), updating indices, caches and dirt."""
        old = self.rules.get(lhs, {})
        new_rs = new or {}
        for rhs, c in old.items():
            if rhs not in new_rs:
                self._collisions(lhs, rhs)
                self._index(lhs, rhs, -1)
            elif new_rs[rhs] != c:
                self._collisions(lhs, rhs)
        for rhs in new_rs:
            if rhs not in old:
                self._index(lhs, rhs, 1)
                self._collisions(lhs, rhs)
        self.dirty.add(lhs)
        if len(old) == 1:
            self.single[next(iter(old))].discard(lhs)
            self.touched.add(next(iter(old)))
        if lhs != self.start:
            if lhs in self.signature:
                self._group((2, self.signature.pop(lhs)), lhs, -1)
            if new is not None:
                self.signature[lhs] = frozenset(new_rs)
                self._group((2, self.signature[lhs]), lhs, 1)
        self.total_ll -= self.ll.pop(lhs, 0.0)
        self.total_units -= self.units.pop(lhs, 0)
        if new is None:
            self.rules.pop(lhs, None)
            self.count.pop(lhs, None)
            return
        self.rules[lhs] = new_rs
        self.count[lhs] = sum(new_rs.values())
        if len(new_rs) == 1:
            self.single[next(iter(new_rs))].add(lhs)
            self.touched.add(next(iter(new_rs)))
        self.ll[lhs], self.units[lhs] = _rule_ll(new_rs), _rule_units(new_rs)
        self.total_ll += self.ll[lhs]
        self.total_units += self.units[lhs]

    # -- scores -----------------------------------------------------------------------------------------

    def _by_parent(self, sym: int) -> dict[int, list[tuple[int, ...]]]:
        out: dict[int, list[tuple[int, ...]]] = defaultdict(list)
        for p, rhs in self.occ.get(sym, {}):
            out[p].append(rhs)
        return out

    def _merge_local(self, a: int, b: int) -> tuple[float, int]:
        """``(d_ll, d_units)`` of merging ``a`` and ``b``, as ``_Inducer._merge_delta`` computes it, from the
        productions that can collapse only: a production of a parent that collapses with none keeps its count and
        length and adds nothing. A production holding one of ``a``, ``b`` once collapses only with the same
        production with the other symbol in that place (their shared buckets ``(p, prefix, suffix)``); one
        holding them at several places is in ``co`` (both) or ``multi`` (one repeated). The merge is the same
        whichever symbol is kept (the grammars differ by a renaming)."""
        keep, drop = (a, b) if a < b else (b, a)
        rk, rd = self.rules[keep], self.rules[drop]
        # own productions: ll = sum xlogx(c) - xlogx(C); pooling changes only the common right-hand sides
        d_ll = _xlogx(self.count[keep]) + _xlogx(self.count[drop]) - _xlogx(self.count[keep] + self.count[drop])
        d_units = 0
        small, large = (rk, rd) if len(rk) <= len(rd) else (rd, rk)
        for rhs, c in small.items():
            other = large.get(rhs)
            if other:
                d_ll += _xlogx(c + other) - _xlogx(c) - _xlogx(other)
                d_units -= len(rhs) + 1
        pair = (keep, drop)
        involved: dict[int, set[tuple[int, ...]]] = defaultdict(set)
        for _, p, prefix, suffix in self.shared.get(pair, ()):
            involved[p].add((*prefix, drop, *suffix))
        for p, rhs in self.co.get(pair, ()):
            involved[p].add(rhs)
        for p, rhs in self.multi.get(drop, ()):
            involved[p].add(rhs)
        for p, rhs in self.multi.get(keep, ()):
            if drop in rhs:
                involved[p].add(rhs)
        for p, rhss in involved.items():
            rs = self.rules[p]
            moved: dict[tuple[int, ...], int] = {}
            for rhs in rhss:
                c = rs.get(rhs, 0)
                if not c or drop not in rhs:
                    continue
                d_ll -= _xlogx(c)
                d_units -= len(rhs) + 1
                new = tuple(keep if s == drop else s for s in rhs)
                moved[new] = moved.get(new, 0) + c
            for new, c in moved.items():
                old = rs.get(new, 0)
                if old:
                    d_ll -= _xlogx(old)
                    d_units -= len(new) + 1
                d_ll += _xlogx(c + old)
                d_units += len(new) + 1
        return d_ll, d_units

    def _collisions(self, p: int, e: tuple[int, ...]) -> None:
        """Note the pairs whose merge would collapse production ``e`` of ``p`` with another (called when ``e`` is
        added, removed or recounted). A merge's local part is a sum over such collapses only -- a production
        that collapses with none keeps its count and length -- so these are the pairs ``e`` can change: ``(s, x)``
        for ``x`` in the bucket ``(p, prefix, suffix)`` of each nonterminal ``s`` of ``e`` (``e`` with ``x`` in
        the place of ``s`` is a production of ``p``), every pair of two nonterminals of ``e`` (collapses at
        several places at once) and every pair of a nonterminal repeated in ``e``."""
        if self.kinds[e[0]] == _WORD:
            return
        n_max = self.config.max_chunk
        for i in range(len(e) - 1):
            for n in range(2, min(n_max, len(e) - i) + 1):
                self.touched.add(e[i : i + n])
        nts = [sym for sym in e if self.kinds[sym] == _NT]
        for sym in nts:
            rs = self.rules.get(sym)
            if rs is not None and len(rs) == 1:
                self.touched.add(next(iter(rs)))
        if len(set(nts)) < len(nts):
            for sym in {sym for sym in nts if nts.count(sym) > 1}:
                self.stale |= self.pairs_of.get(sym, set())
        for k, a in enumerate(nts):
            for b in nts[k + 1 :]:
                if a != b:
                    self.stale.add((a, b) if a < b else (b, a))
        for i, sym in enumerate(e):
            if self.kinds[sym] == _NT:
                for x in self.groups.get((0, p, e[:i], e[i + 1 :]), ()):
                    if x != sym:
                        self.stale.add((sym, x) if sym < x else (x, sym))

    def _stale(self) -> set[tuple[int, int]]:
        """The pairs whose local part an operation may have changed: new pairs, pairs of a nonterminal whose
        productions changed and the pairs :meth:`_collisions` noted."""
        todo = self.stale | self.fresh
        for nt in self.dirty:
            todo |= self.pairs_of.get(nt, set())
        self.dirty.clear()
        self.fresh.clear()
        self.stale = set()
        for seq in self.touched:
            self.chunk_cache.pop(seq, None)
        self.touched.clear()
        return {pair for pair in todo if pair in self.support}

    def _rescore(self) -> None:
        """Recompute the local parts of the pairs :meth:`_stale` names."""
        todo = self._stale()
        for pair in todo:
            k = self.slot.get(pair)
            if k is None:
                if not self.free:
                    self._grow()
                k = self.free.pop()
                self.slot[pair] = k
                self.pair_at[k] = pair
                self.ties[k] = _tie(self.config.seed, pair)
                self.alive[k] = True
            self.d_ll[k], self.d_units[k] = self._merge_local(*pair)

    def _grow(self) -> None:
        n = len(self.pair_at)
        size = max(1024, 2 * n)
        for name in ("d_ll", "d_units", "alive", "ties"):
            arr = getattr(self, name)
            grown = np.zeros(size, dtype=arr.dtype)
            grown[: len(arr)] = arr
            setattr(self, name, grown)
        self.pair_at.extend([None] * (size - n))
        self.free.extend(range(size - 1, n - 1, -1))

    def _global(self, d_units: float | np.ndarray, d_symbols: int) -> float | np.ndarray:
        """``lambda * (DL after - DL before)`` for a change of ``d_units`` units and ``d_symbols`` symbols."""
        v = self.ind.fixed_symbols + len(self.rules)
        return self.config.prior_weight * (
            (self.total_units + d_units) * math.log(v + d_symbols) - self.total_units * math.log(v)
        )

    def _chunk_shortlist(self) -> list[tuple[int, ...]]:
        out: list[tuple[int, tuple[int, ...]]] = []
        seen: set[tuple[int, ...]] = set()
        while self.heap and len(out) < self.config.chunk_candidates:
            neg, seq = heapq.heappop(self.heap)
            k = self.ngrams.get(seq, 0)
            if seq in seen or k < 2 or (len(seq) - 1) * k - (len(seq) + 1) != -neg:
                continue
            seen.add(seq)
            out.append((neg, seq))
        for item in out:
            heapq.heappush(self.heap, item)
        if len(self.heap) > 4 * len(self.ngrams) + 4096:
            self.heap = [
                (-((len(q) - 1) * k - (len(q) + 1)), q)
                for q, k in self.ngrams.items()
                if k >= 2 and (len(q) - 1) * k - (len(q) + 1) > 0
            ]
            heapq.heapify(self.heap)
        return [seq for _, seq in out]

    def _chunk_plan(self, seq: tuple[int, ...]) -> tuple[int | None, dict[int, dict[tuple[int, ...], int]], int]:
        """For chunking ``seq``: the reused nonterminal (or None), the new productions of every changed lhs
        (only the entries that change; ``0`` removes one) and the number of occurrences replaced."""
        targets = self.single.get(seq)
        existing = min(targets - {self.start}) if targets and targets - {self.start} else None
        name = existing if existing is not None else -1
        plan: dict[int, dict[tuple[int, ...], int]] = defaultdict(dict)
        total = 0
        for lhs, rhs in list(self.occ.get(seq[0], {})):
            if lhs == name:
                continue
            new, k = _replace(rhs, seq, name)
            if not k:
                continue
            c = self.rules[lhs][rhs]
            total += c * k
            change = plan[lhs]
            change[rhs] = change.get(rhs, 0) - c
            change[new] = change.get(new, 0) + c
        return existing, plan, total

    def _chunk_score(self, seq: tuple[int, ...]) -> float:
        """The score change of chunking ``seq``; its local part is cached until a production holding ``seq``
        (or the nonterminal it would reuse) changes (:meth:`_collisions` notes those n-grams)."""
        if seq not in self.chunk_cache:
            existing, plan, _ = self._chunk_plan(seq)
            d_ll, d_units = 0.0, 0
            for lhs, change in plan.items():
                rs = self.rules[lhs]
                for rhs, dc in change.items():
                    old = rs.get(rhs, 0)
                    d_ll += _xlogx(old + dc) - _xlogx(old)
                    d_units += (len(rhs) + 1) * ((old + dc > 0) - (old > 0))
            if existing is None:
                d_units += len(seq) + 1
            self.chunk_cache[seq] = (d_ll, d_units, 0 if existing is not None else 1)
        d_ll, d_units, d_symbols = self.chunk_cache[seq]
        return d_ll - self._global(d_units, d_symbols)

    # -- operations -------------------------------------------------------------------------------------

    def _apply_merge(self, a: int, b: int) -> None:
        keep, drop = (a, b) if a < b else (b, a)
        merged = dict(self.rules[keep])
        for rhs, c in self.rules[drop].items():
            merged[rhs] = merged.get(rhs, 0) + c
        for p, rhss in self._by_parent(drop).items():
            rs = dict(self.rules[p])
            for rhs in rhss:
                c = rs.pop(rhs)
                new = tuple(keep if s == drop else s for s in rhs)
                rs[new] = rs.get(new, 0) + c
            self._set_rules(p, rs)
        self._set_rules(drop, None)
        self._set_rules(keep, merged)
        self.merges += 1

    def _apply_chunk(self, seq: tuple[int, ...]) -> None:
        existing, plan, total = self._chunk_plan(seq)
        name = existing if existing is not None else self.ind._new_nonterminal()
        for lhs, change in plan.items():
            rs = dict(self.rules[lhs])
            for rhs, dc in change.items():
                rhs = tuple(name if s == -1 else s for s in rhs)
                c = rs.get(rhs, 0) + dc
                if c:
                    rs[rhs] = c
                else:
                    del rs[rhs]
            self._set_rules(lhs, rs)
        self._set_rules(name, {seq: self.rules.get(name, {}).get(seq, 0) + total})
        self.chunks += 1

    def _best_merge(self) -> tuple[float, float, tuple[int, int]] | None:
        n = len(self.pair_at)
        if not n:
            return None
        scores = np.where(self.alive[:n], self.d_ll[:n] - self._global(self.d_units[:n], -1), -np.inf)
        reach = _Reachability(self.rules)
        while True:
            top = scores.max()
            if not np.isfinite(top):
                return None
            tied = np.flatnonzero(scores == top)
            k = int(tied[np.argmin(self.ties[tied])])
            a, b = self.pair_at[k]  # type: ignore[misc]
            if reach.reaches(a, b) or reach.reaches(b, a):
                scores[k] = -np.inf
                continue
            return float(top), float(self.ties[k]), (a, b)

    def score(self) -> float:
        """``log P(D|M) - lambda * DL(M)`` of the current grammar."""
        v = self.ind.fixed_symbols + len(self.rules)
        return self.total_ll - self.config.prior_weight * self.total_units * math.log(v)

    def run(self) -> _State:
        """Greedy steps until no operation improves the posterior by more than ``min_gain`` (or a bound)."""
        self.stopped = "max_steps"
        for _ in range(self.config.max_steps):
            reason = self.budget.exceeded()
            if reason:
                self.stopped = reason
                break
            best: tuple[float, float, tuple] | None = None
            merge = self._best_merge()
            if merge is not None:
                best = (merge[0], merge[1], ("merge", *merge[2]))
            for seq in self._chunk_shortlist():
                cand = (self._chunk_score(seq), _tie(self.config.seed, (-1, *seq)), ("chunk", seq))
                if best is None or (cand[0], -cand[1]) > (best[0], -best[1]):
                    best = cand
            if best is None or best[0] <= self.config.min_gain:
                self.stopped = "converged"
                break
            if best[2][0] == "merge":
                self._apply_merge(best[2][1], best[2][2])
            else:
                self._apply_chunk(best[2][1])
            self._rescore()
            if self.progress is not None:
                self.progress.update(1)
                self.progress.set_postfix(
                    merges=self.merges, chunks=self.chunks, rules=self.rules_count(), score=f"{self.score():.0f}"
                )
        return _State(self.rules, self.merges, self.chunks)

    def rules_count(self) -> int:
        """Productions in the grammar (without slot values)."""
        return sum(len(rs) for rs in self.rules.values())


def _replace(rhs: tuple[int, ...], seq: tuple[int, ...], name: int) -> tuple[tuple[int, ...], int]:
    """``rhs`` with non-overlapping occurrences of ``seq`` (left to right) replaced by ``name``; and their count."""
    n, out, i, k = len(seq), [], 0, 0
    while i < len(rhs):
        if rhs[i : i + n] == seq:
            out.append(name)
            i += n
            k += 1
        else:
            out.append(rhs[i])
            i += 1
    return (tuple(out), k) if k else (rhs, 0)


class _Reachability:
    """Which nonterminals a nonterminal rewrites to, directly or not (memoized depth-first search)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.memo: dict[int, frozenset[int]] = {}

    def below(self, a: int) -> frozenset[int]:
        if a not in self.memo:
            out: set[int] = set()
            for rhs in self.rules.get(a, {}):
                for s in rhs:
                    if s in self.rules and s not in out:
                        out.add(s)
                        out |= self.below(s)
            self.memo[a] = frozenset(out)
        return self.memo[a]

    def reaches(self, a: int, b: int) -> bool:
        return b in self.below(a)


def _segments(u: Utterance, lowercase: bool) -> list[str | SlotRef]:
    """The utterance as carrier words (see :func:`carrier_words`) and slot references."""
    out: list[str | SlotRef] = []
    pos = 0
    for span in u.spans:
        out.extend(carrier_words(u.text[pos : span.start], lowercase))
        out.append(SlotRef(span.slot))
        pos = span.end
    out.extend(carrier_words(u.text[pos:], lowercase))
    return out


def induce_grammar(
    utterances: Iterable[Utterance], config: InductionConfig | None = None, progress: bool = False
) -> tuple[Grammar, list[InductionTrace]]:
    """Induce one grammar per intent by Bayesian model merging (see the module doc); return it and a trace.

    ``progress``: show a progress bar per intent (utterances, steps, merges, chunks, productions, log posterior).
    """
    config = config or InductionConfig()
    by_intent: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_intent.setdefault(u.intent, []).append(u)
    if not by_intent:
        raise ConfigError("grammar induction needs at least one golden utterance")
    intents: dict[str, IntentGrammar] = {}
    traces = []
    for intent in sorted(by_intent):
        t = time.perf_counter()
        inducer = _Inducer(by_intent[intent], config)
        start_score = inducer.score(inducer.state)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"induce {intent} ({len(by_intent[intent])} utterances)", unit="step", mininterval=1.0)
        try:
            final, stopped = inducer.run(bar)
        finally:
            if bar is not None:
                bar.close()
        intents[intent] = inducer.to_grammar(intent, final)
        traces.append(
            InductionTrace(
                intent,
                final.merges,
                final.chunks,
                start_score,
                inducer.score(final),
                final.total_ll,
                inducer.description_length(final),
                len(by_intent[intent]),
                stopped,
                time.perf_counter() - t,
            )
        )
    return Grammar(intents), traces
