"""A stochastic rewrite grammar per intent, with slot classes, statistics and a readable rendering.

Each intent has a start nonterminal whose productions (with Viterbi counts from induction) rewrite to
words, other nonterminals and slot references; a slot reference rewrites to one of the slot's values
(golden values with their counts, plus catalog values with a pseudo-count). The grammar is acyclic, so
its language is finite and compiles to a finite-state transducer (:mod:`trustml.synth.fst`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustml.data.text_files import read_text
from trustml.errors import DataError


@dataclass(frozen=True, order=True)
class Nonterminal:
    """A nonterminal symbol of an intent grammar."""

    name: str


@dataclass(frozen=True, order=True)
class SlotRef:
    """A reference to slot ``slot``: rewrites to one of the slot's values (annotated as that slot)."""

    slot: str


Symbol = str | Nonterminal | SlotRef
"""A grammar symbol: a word (``str``), a :class:`Nonterminal` or a :class:`SlotRef`."""

Rules = dict[Nonterminal, dict[tuple[Symbol, ...], float]]


@dataclass
class IntentGrammar:
    """The grammar of one intent: ``rules[lhs][rhs] = count`` and ``slot_values[slot][value] = weight``.

    ``catalog_extensions[slot]`` lists the catalogs whose values were added to the slot's class.
    """

    intent: str
    start: Nonterminal
    rules: Rules
    slot_values: dict[str, dict[str, float]]
    catalog_extensions: dict[str, list[str]] = field(default_factory=dict)

    def probabilities(self, lhs: Nonterminal) -> dict[tuple[Symbol, ...], float]:
        """Maximum-likelihood production probabilities ``P(rhs | lhs) = c(lhs -> rhs) / c(lhs)``."""
        total = sum(self.rules[lhs].values())
        return {rhs: c / total for rhs, c in self.rules[lhs].items()}

    def slot_probabilities(self, slot: str) -> dict[str, float]:
        """``P(value | slot)``: the slot's value weights normalized."""
        total = sum(self.slot_values[slot].values())
        return {v: w / total for v, w in self.slot_values[slot].items()}

    def topological_order(self) -> list[Nonterminal]:
        """Nonterminals ordered so that every nonterminal comes after all the ones it rewrites to."""
        order: list[Nonterminal] = []
        state: dict[Nonterminal, int] = {}

        def visit(nt: Nonterminal) -> None:
            if state.get(nt) == 2:
                return
            if state.get(nt) == 1:
                raise DataError(f"grammar of intent '{self.intent}' is recursive at {nt.name}; it must be acyclic")
            state[nt] = 1
            for rhs in self.rules[nt]:
                for sym in rhs:
                    if isinstance(sym, Nonterminal):
                        visit(sym)
            state[nt] = 2
            order.append(nt)

        for nt in sorted(self.rules):
            visit(nt)
        return order

    def expansions(self) -> int:
        """The number of derivations of the start symbol (sentences with their slot values, with repeats
        when two derivations give the same sentence): ``N(A) = sum_rhs prod_sym N(sym)``."""
        counts: dict[Symbol, int] = {}
        for nt in self.topological_order():
            counts[nt] = sum(math.prod(_count(s, counts, self.slot_values) for s in rhs) for rhs in self.rules[nt])
        return counts[self.start]

    def templates(self) -> int:
        """The number of derivations with each slot counted once (distinct carrier patterns)."""
        counts: dict[Symbol, int] = {}
        for nt in self.topological_order():
            counts[nt] = sum(math.prod(counts.get(s, 1) for s in rhs) for rhs in self.rules[nt])
        return counts[self.start]


def _count(sym: Symbol, counts: dict[Symbol, int], slot_values: dict[str, dict[str, float]]) -> int:
    if isinstance(sym, SlotRef):
        return len(slot_values[sym.slot])
    return counts.get(sym, 1)


@dataclass
class Grammar:
    """The induced grammars of all intents."""

    intents: dict[str, IntentGrammar]

    def stats(self) -> dict[str, Any]:
        """Counts per intent and in total: nonterminals, rules (productions: structural + lexical + slot
        values), structural rules (all but slot values and the productions of nonterminals that only
        rewrite to one word), slot values, templates and expansions (derivations)."""
        per: dict[str, dict[str, int]] = {}
        for name, g in self.intents.items():
            lexical = sum(1 for rs in g.rules.values() for rhs in rs if len(rs) == 1 and _is_word(rhs))
            productions = sum(len(rs) for rs in g.rules.values())
            slot_values = sum(len(v) for v in g.slot_values.values())
            per[name] = {
                "nonterminals": len(g.rules),
                "rules": productions + slot_values,
                "structural_rules": productions - lexical,
                "slot_values": slot_values,
                "templates": g.templates(),
                "expansions": g.expansions(),
            }
        total = {k: sum(p[k] for p in per.values()) for k in next(iter(per.values()), {})}
        return {"total": total, "intents": per}

    def render(self, max_values: int = 12) -> str:
        """The grammar as readable rewrite rules with alternatives ``(a | b)`` and optional parts ``x?``.

        Nonterminals that rewrite to one word are shown as the word, nonterminals used once are inlined,
        the others are named ``<nK>``; slots are ``{slot}`` and list up to ``max_values`` values.
        """
        return "\n\n".join(_Renderer(g, max_values).render() for g in self.intents.values()) + "\n"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable form (see :meth:`from_json`)."""
        return {
            name: {
                "start": g.start.name,
                "rules": [
                    {"lhs": lhs.name, "rhs": [_sym_json(s) for s in rhs], "count": c}
                    for lhs, rs in g.rules.items()
                    for rhs, c in rs.items()
                ],
                "slot_values": g.slot_values,
                "catalog_extensions": g.catalog_extensions,
            }
            for name, g in self.intents.items()
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: str = "<grammar>") -> Grammar:
        """The grammar :meth:`to_json` wrote; raises :class:`DataError` naming ``source`` when malformed."""
        intents = {}
        try:
            for name, g in obj.items():
                rules: Rules = {}
                for r in g["rules"]:
                    rules.setdefault(Nonterminal(r["lhs"]), {})[tuple(_sym_from_json(s) for s in r["rhs"])] = r["count"]
                intents[name] = IntentGrammar(
                    name, Nonterminal(g["start"]), rules, g["slot_values"], g.get("catalog_extensions", {})
                )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{source}: not a grammar written by trustml-synth ({exc!r})") from exc
        return cls(intents)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Grammar:
        """Read a grammar written by :meth:`save`."""
        try:
            obj = json.loads(read_text(path, "utf-8", option="the grammar file (written as UTF-8 by save)"))
        except json.JSONDecodeError as exc:
            raise DataError(f"cannot read grammar {path}: {exc}") from exc
        return cls.from_json(obj, str(path))


def _is_word(rhs: tuple[Symbol, ...]) -> bool:
    return len(rhs) == 1 and isinstance(rhs[0], str)


def _sym_json(sym: Symbol) -> Any:
    if isinstance(sym, Nonterminal):
        return {"nt": sym.name}
    if isinstance(sym, SlotRef):
        return {"slot": sym.slot}
    return sym


def _sym_from_json(obj: Any) -> Symbol:
    if isinstance(obj, str):
        return obj
    if "nt" in obj:
        return Nonterminal(obj["nt"])
    return SlotRef(obj["slot"])


class _Renderer:
    """Renders one intent grammar; factors alternatives by common prefixes and suffixes."""

    def __init__(self, grammar: IntentGrammar, max_values: int) -> None:
        self.g = grammar
        self.max_values = max_values
        uses: dict[Nonterminal, int] = {}
        for rs in grammar.rules.values():
            for rhs in rs:
                for s in rhs:
                    if isinstance(s, Nonterminal):
                        uses[s] = uses.get(s, 0) + 1
        self.words = {nt: rhs[0] for nt, rs in grammar.rules.items() if len(rs) == 1 for rhs in rs if _is_word(rhs)}
        self.named = [
            nt
            for nt in grammar.topological_order()[::-1]
            if nt != grammar.start and nt not in self.words and uses.get(nt, 0) > 1
        ]
        self.names = {nt: f"<n{k}>" for k, nt in enumerate(self.named, start=1)}

    def render(self) -> str:
        g = self.g
        lines = [f"# intent {g.intent}", f"<{g.intent}> ="]
        lines += [f"    | {alt}" for alt in self._alternatives(g.start, top=True)]
        for nt in self.named:
            lines.append(f"{self.names[nt]} = {self._expr(nt)}")
        for slot, values in sorted(g.slot_values.items()):
            shown = sorted(values, key=lambda v: (-values[v], v))[: self.max_values]
            more = len(values) - len(shown)
            tail = f" | ... ({more} more)" if more > 0 else ""
            ext = f"  # + catalog {', '.join(g.catalog_extensions[slot])}" if g.catalog_extensions.get(slot) else ""
            lines.append(f"{{{slot}}} = {' | '.join(shown)}{tail}{ext}")
        return "\n".join(lines)

    def _tokens(self, rhs: tuple[Symbol, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for s in rhs:
            if isinstance(s, SlotRef):
                out.append(f"{{{s.slot}}}")
            elif isinstance(s, Nonterminal):
                out.append(self.words.get(s) or self.names.get(s) or _group(self._expr(s)))
            else:
                out.append(s)
        return tuple(out)

    def _expr(self, nt: Nonterminal) -> str:
        return _factor([self._tokens(rhs) for rhs in self.g.rules[nt]])

    def _alternatives(self, nt: Nonterminal, top: bool) -> list[str]:
        groups: dict[str, list[tuple[str, ...]]] = {}
        for rhs in self.g.rules[nt]:
            toks = self._tokens(rhs)
            groups.setdefault(toks[0] if toks else "", []).append(toks)
        return [_factor(alts) for _, alts in sorted(groups.items())]


def _factor(alts: list[tuple[str, ...]]) -> str:
    """A compact expression for a set of token sequences: common prefix/suffix, ``(a | b)`` and ``x?``."""
    alts = list(dict.fromkeys(alts))
    optional = () in alts
    alts = [a for a in alts if a]
    if not alts:
        return ""
    if len(alts) == 1:
        body = " ".join(alts[0])
        return (f"{body}?" if len(alts[0]) == 1 else f"({body})?") if optional else body
    prefix = _common_prefix(alts)
    rests = [a[len(prefix) :] for a in alts]
    suffix = _common_prefix([r[::-1] for r in rests])[::-1]
    if prefix or suffix:
        mids = [r[: len(r) - len(suffix)] for r in rests]
        body = " ".join(p for p in (*prefix, _factor(mids), *suffix) if p)
    else:
        groups: dict[str, list[tuple[str, ...]]] = {}
        for a in alts:
            groups.setdefault(a[0], []).append(a)
        body = " | ".join(_factor(g) for _, g in sorted(groups.items()))
        return f"({body})?" if optional else f"({body})"
    if optional:
        return f"({body})?"
    return body


def _group(expr: str) -> str:
    """``expr`` as one unit: unchanged when it is a single word or one parenthesized group, else ``(expr)``."""
    if " " not in expr:
        return expr
    if expr.startswith("("):
        depth = 0
        for i, ch in enumerate(expr):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                if expr[i + 1 :] in ("", "?"):
                    return expr
                break
    return f"({expr})"


def _common_prefix(seqs: list[tuple[str, ...]]) -> tuple[str, ...]:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return first[:k]
