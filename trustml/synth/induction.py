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
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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
    ``max_steps``: a safety bound on the number of operations; ``seed``: tie-breaking order.
    """

    prior_weight: float = 1.0
    search: str = "greedy"
    beam_width: int = 3
    max_chunk: int = 4
    chunk_candidates: int = 8
    lowercase: bool = True
    max_steps: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.search not in ("greedy", "beam"):
            raise ConfigError(f"induction.search must be 'greedy' or 'beam', got '{self.search}'")
        if self.prior_weight < 0:
            raise ConfigError(f"induction.prior_weight must be >= 0, got {self.prior_weight}")
        if self.beam_width < 1 or self.max_chunk < 2 or self.chunk_candidates < 0 or self.max_steps < 0:
            raise ConfigError(
                f"induction needs beam_width >= 1, max_chunk >= 2, chunk_candidates >= 0, max_steps >= 0 (got {self})"
            )


@dataclass(frozen=True)
class InductionTrace:
    """What the search did for one intent: operations applied and the posterior before and after."""

    intent: str
    merges: int
    chunks: int
    log_posterior_start: float
    log_posterior_end: float
    log_likelihood_end: float
    description_length_end: float


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

    def run(self) -> _State:
        """Greedy or beam search until no operation improves the posterior (or ``max_steps``)."""
        state = self.state
        if self.config.search == "greedy":
            for _ in range(self.config.max_steps):
                candidates = self._candidates(state)
                if not candidates or candidates[0][0] <= 1e-9:
                    break
                state = self._apply(state, candidates[0][2])
            return state
        beam, best = [state], state
        for _ in range(self.config.max_steps):
            children: list[tuple[float, float, _State]] = []
            for s in beam:
                base = self.score(s)
                for delta, tie, op in self._candidates(s)[: self.config.beam_width]:
                    if delta > 1e-9:
                        children.append((base + delta, tie, self._apply(s, op)))
            if not children:
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
        return best

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
    utterances: Iterable[Utterance], config: InductionConfig | None = None
) -> tuple[Grammar, list[InductionTrace]]:
    """Induce one grammar per intent by Bayesian model merging (see the module doc); return it and a trace."""
    config = config or InductionConfig()
    by_intent: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_intent.setdefault(u.intent, []).append(u)
    if not by_intent:
        raise ConfigError("grammar induction needs at least one golden utterance")
    intents: dict[str, IntentGrammar] = {}
    traces = []
    for intent in sorted(by_intent):
        inducer = _Inducer(by_intent[intent], config)
        start_score = inducer.score(inducer.state)
        final = inducer.run()
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
            )
        )
    return Grammar(intents), traces
