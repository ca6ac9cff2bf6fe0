"""Counterfactual fairness for text: swap the protected words, compare the predictions.

``swap_protected_words`` replaces each gendered word by its counterpart from a word-pair list ("he" <-> "she",
"John" <-> "Patricia"), in both directions, whole words only, keeping the case ("He" -> "She",
"HIS" -> "HERS"). ``gender_proxy`` derives a protected attribute from the same list where a data set has
none. ``counterfactual_metrics`` compares a classifier's class probabilities ``P`` on the original texts with
``Q`` on their counterfactuals, over the texts the swap changed (``S``):

    flip rate       = (1/|S|) sum_{i in S} 1[argmax_c P_ic != argmax_c Q_ic]
    prob. change    = (1/|S|) sum_{i in S} |P_{i,y_i} - Q_{i,y_i}|,   y_i = argmax_c P_ic
    total variation = (1/|S|) sum_{i in S} 1/2 sum_c |P_ic - Q_ic|
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trustml.data.text_files import read_text
from trustml.errors import ConfigError, DataError

DEFAULT_PAIRS_PATH = Path(__file__).with_name("data") / "gender_pairs.yaml"

#: Words after which a context word ("her", "his") is not a possessive determiner: "gave her a book",
#: "saw her yesterday", "it is his and". Any other following word counts as the noun phrase it determines.
_NOT_A_NOUN = frozenset(
    "a an the to and or but nor so yet in on at for with from by of about as than that this these those "
    "up down out off over under into onto again too back away now then here there if when because while "
    "is was are were be been being am will would can could should might must shall did does do has have had "
    "not very all both each either what who whom how why where yesterday today tonight tomorrow some any "
    "my your his her our their its me him them us you i we they she he it".split()
)
_NEXT_WORD = re.compile(r"[ \t]+([^\W\d_][\w'-]*)")


@dataclass(frozen=True)
class WordPairs:
    """A gendered word-pair list (``male``/``female``); build with :func:`load_word_pairs`."""

    source: str
    swaps: dict[str, str]  # lower-case word -> counterpart (context words excluded)
    context: dict[str, tuple[str, str]]  # lower-case word -> (before a noun, otherwise)
    names: dict[str, str]  # lower-case name -> counterpart (capitalised when written)
    gender: dict[str, str]  # lower-case word or name -> "male" | "female"
    pattern: re.Pattern[str] = field(repr=False)


def _pair_list(raw: Any, key: str, path: Path) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) and w.strip() for w in p) for p in raw
    ):
        raise ConfigError(f"{path}: `{key}` must be a list of [male, female] pairs of non-empty words")
    return [(m.strip().lower(), f.strip().lower()) for m, f in raw]


def _add(table: dict[str, str], word: str, target: str, path: Path, key: str) -> None:
    if word in table and table[word] != target:
        raise ConfigError(
            f"{path}: {word!r} is swapped both to {table[word]!r} and to {target!r} in `{key}`; a word needs one "
            "counterpart (list a context-dependent word under `context`)"
        )
    table[word] = target


def load_word_pairs(path: str | Path | None = None) -> WordPairs:
    """Load a word-pair YAML (default: the shipped ``data/gender_pairs.yaml``; its header shows the format)."""
    return _load_word_pairs(str(Path(path).resolve()) if path is not None else str(DEFAULT_PAIRS_PATH))


@lru_cache(maxsize=8)
def _load_word_pairs(path_str: str) -> WordPairs:
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(f"word-pair file {path} not found; pass a YAML with `source:` and `pairs:`")
    try:
        raw = yaml.safe_load(read_text(path, "utf-8", "data.counterfactual_pairs"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str) or not raw.get("pairs"):
        raise ConfigError(f"{path} needs a `source:` line (where the list comes from) and a non-empty `pairs:` list")
    swaps: dict[str, str] = {}
    gender: dict[str, str] = {}
    for male, female in _pair_list(raw["pairs"], "pairs", path):
        _add(swaps, male, female, path, "pairs")
        _add(swaps, female, male, path, "pairs")
        gender[male], gender[female] = "male", "female"
    for word, target in (raw.get("one_way") or {}).items():
        word, target = str(word).lower(), str(target).lower()
        if target not in gender:
            raise ConfigError(f"{path}: `one_way` target {target!r} is in no pair")
        _add(swaps, word, target, path, "one_way")
        gender[word] = "female" if gender[target] == "male" else "male"
    context: dict[str, tuple[str, str]] = {}
    for word, forms in (raw.get("context") or {}).items():
        if not isinstance(forms, dict) or set(forms) != {"before_noun", "otherwise"}:
            raise ConfigError(f"{path}: `context.{word}` needs exactly `before_noun` and `otherwise`")
        context[str(word).lower()] = (str(forms["before_noun"]).lower(), str(forms["otherwise"]).lower())
        if str(word).lower() not in gender:
            raise ConfigError(f"{path}: `context` word {word!r} is in no pair")
    names: dict[str, str] = {}
    for male, female in _pair_list(raw.get("names"), "names", path):
        _add(names, male, female, path, "names")
        _add(names, female, male, path, "names")
        gender.setdefault(male, "male")
        gender.setdefault(female, "female")
    for word in context:
        swaps.pop(word, None)
    words = sorted(set(swaps) | set(context) | set(names), key=lambda w: (-len(w), w))
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return WordPairs(raw["source"].strip(), swaps, context, names, gender, pattern)


def _match_case(source: str, target: str) -> str:
    """``target`` written like ``source``: ``HIS`` -> ``HERS``, ``He`` -> ``She``, ``he`` -> ``she``."""
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def _counterpart(match: re.Match[str], pairs: WordPairs) -> str | None:
    word = match.group(0)
    key = word.lower()
    if key in pairs.context:
        before_noun, otherwise = pairs.context[key]
        nxt = _NEXT_WORD.match(match.string, match.end())
        return before_noun if nxt is not None and nxt.group(1).lower() not in _NOT_A_NOUN else otherwise
    if key in pairs.swaps:
        return pairs.swaps[key]
    if word[:1].isupper():  # a name only when capitalised ("Carol" but not "a carol")
        return pairs.names[key]
    return None


@dataclass(frozen=True)
class SwapResult:
    """A counterfactual text and how many words were swapped."""

    text: str
    n_swaps: int

    @property
    def changed(self) -> bool:
        return self.n_swaps > 0


def swap_protected_words(text: str, pairs: WordPairs | None = None) -> SwapResult:
    """Swap every protected word of ``text`` for its counterpart (both directions at once, case kept).

    "her"/"his" take the form the next word calls for (``context`` in the YAML): "her book" -> "his book",
    "saw her." -> "saw him."; names swap only when capitalised. Punctuation and spacing stay as they are.
    """
    pairs = pairs or load_word_pairs()
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        target = _counterpart(match, pairs)
        if target is None:
            return match.group(0)
        count += 1
        return _match_case(match.group(0), target)

    return SwapResult(pairs.pattern.sub(replace, text), count)


def counterfactual_texts(texts: Sequence[str], pairs: WordPairs | None = None) -> tuple[list[str], np.ndarray]:
    """Counterfactual of each text and a boolean array: did the swap change it?"""
    pairs = pairs or load_word_pairs()
    results = [swap_protected_words(t, pairs) for t in texts]
    return [r.text for r in results], np.array([r.changed for r in results], dtype=bool)


def gender_proxy(text: str, pairs: WordPairs | None = None) -> str:
    """A proxy protected attribute: which gendered words (or names) the text contains.

    Returns ``"male"``, ``"female"``, ``"both"`` or ``"none"``.

    How noisy this proxy is: it labels the *people mentioned*, not the author or the addressee, and only
    through a fixed English list. It errs when the text talks about someone of another gender ("my
    husband" in a woman's message is "male"), when a listed word is used in another sense ("groom the dog",
    "Sue them", a name that is also a surname), when people go by unlisted names, nicknames or non-English
    names, for gender-neutral or non-binary references ("they", "Alex"), and for mixed texts ("both"). Most
    texts of an NLU data set mention no one and fall in ``"none"``, so the labelled groups are small and
    skewed towards texts about family and relationships. Use it to compare groups of texts, not to infer
    anyone's gender, and report the group sizes with any metric built on it.
    """
    pairs = pairs or load_word_pairs()
    found = set()
    for match in pairs.pattern.finditer(text):
        key = match.group(0).lower()
        if key in pairs.names and key not in pairs.swaps and key not in pairs.context:
            if not match.group(0)[:1].isupper():
                continue
        found.add(pairs.gender[key])
    if len(found) == 2:
        return "both"
    return found.pop() if found else "none"


def gender_proxies(texts: Sequence[str], pairs: WordPairs | None = None) -> np.ndarray:
    """:func:`gender_proxy` of each text, as an object array (a protected-attribute column)."""
    pairs = pairs or load_word_pairs()
    return np.array([gender_proxy(t, pairs) for t in texts], dtype=object)


@dataclass
class CounterfactualReport:
    """Counterfactual metrics over the texts the swap changed (formulas in the module docstring)."""

    flip_rate: float
    mean_abs_prob_change: float
    mean_total_variation: float
    n_changed: int
    n_flipped: int
    n_texts: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return dict(self.__dict__)


def _check_probs(probs: Any, name: str) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a [texts, classes] probability matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or not np.allclose(arr.sum(axis=1), 1.0, atol=1e-4):
        raise DataError(f"{name} must hold finite, non-negative rows that sum to 1 (apply softmax to logits)")
    return arr


def counterfactual_metrics(probs: Any, cf_probs: Any, changed: Any | None = None) -> CounterfactualReport:
    """Flip rate, mean |change| of the predicted class's probability and mean total variation.

    ``probs``/``cf_probs``: ``[N, C]`` class probabilities on the original and counterfactual texts; ``changed``:
    which texts the swap changed (default: all). The original prediction ``y_i = argmax_c P_ic`` fixes the class
    whose probability change is measured. Raises ``DataError`` when no text changed (nothing to measure).
    """
    p = _check_probs(probs, "probs")
    q = _check_probs(cf_probs, "cf_probs")
    if p.shape != q.shape:
        raise DataError(f"probs {p.shape} and cf_probs {q.shape} must have the same shape (the same texts)")
    mask = np.ones(len(p), dtype=bool) if changed is None else np.asarray(changed, dtype=bool)
    if mask.shape != (len(p),):
        raise DataError(f"changed must hold one flag per text ({len(p)}), got shape {mask.shape}")
    if not mask.any():
        raise DataError(
            "no text was changed by the word swap, so there is no counterfactual to compare: the texts contain "
            "none of the listed words (check the word-pair list and the text column)"
        )
    p, q = p[mask], q[mask]
    pred = p.argmax(axis=1)
    flipped = pred != q.argmax(axis=1)
    rows = np.arange(len(p))
    return CounterfactualReport(
        flip_rate=float(flipped.mean()),
        mean_abs_prob_change=float(np.abs(p[rows, pred] - q[rows, pred]).mean()),
        mean_total_variation=float(0.5 * np.abs(p - q).sum(axis=1).mean()),
        n_changed=int(mask.sum()),
        n_flipped=int(flipped.sum()),
        n_texts=len(mask),
    )


# --------------------------------------------------------------------------------------------------- token pairs


def bijective_word_pairs(pairs: WordPairs | None = None) -> list[tuple[str, str]]:
    """The word pairs ``(male, female)`` as a one-to-one map, for swapping tokens without looking at the context.

    The rule (a word may be in one pair only): first each ``context`` word with its ``before_noun`` form (``her``
    <-> ``his``: the possessive reading, the most frequent one), then ``pairs`` in file order, skipping a pair
    whose word is already taken (``him``/``her``, ``his``/``hers``), then ``names`` (capitalised). ``one_way``
    words have no counterpart of their own and are left out.
    """
    pairs = pairs or load_word_pairs()
    taken: set[str] = set()
    out: list[tuple[str, str]] = []

    def add(male: str, female: str) -> None:
        if male not in taken and female not in taken and male != female:
            taken.update((male, female))
            out.append((male, female))

    for word, (before_noun, _) in pairs.context.items():
        add(*((word, before_noun) if pairs.gender[word] == "male" else (before_noun, word)))
    seen_swaps: set[str] = set()
    for word, target in pairs.swaps.items():
        if word in seen_swaps or pairs.swaps.get(target) != word:
            continue  # one_way words, and each pair once
        seen_swaps.update((word, target))
        add(*((word, target) if pairs.gender[word] == "male" else (target, word)))
    seen_names: set[str] = set()
    for name, target in pairs.names.items():
        if name in seen_names:
            continue
        seen_names.update((name, target))
        male, female = (name, target) if pairs.gender[name] == "male" else (target, name)
        add(male.capitalize(), female.capitalize())
    return out


@dataclass(frozen=True)
class TokenPairs:
    """Word pairs whose both words are one token of a tokenizer (``ids``), and those that are not (``skipped``)."""

    words: list[tuple[str, str]]
    ids: list[tuple[int, int]]
    skipped: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        """Counts for a run record: usable pairs, pairs skipped as multi-token, a few examples of each."""
        return {
            "usable_pairs": len(self.ids),
            "multi_token_pairs": len(self.skipped),
            "usable_examples": [list(p) for p in self.words[:10]],
            "skipped_examples": [list(p) for p in self.skipped[:10]],
        }


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of ``word`` as it appears after a space (so byte-level BPE vocabularies give ``Ġword``)."""
    return list(tokenizer(" " + word, add_special_tokens=False)["input_ids"])


def single_token_pairs(tokenizer: Any, pairs: WordPairs | None = None, option: str = "pairs_path") -> TokenPairs:
    """The pairs of :func:`bijective_word_pairs` usable at the token level: both words a single token.

    A pair with a multi-token word (``granddaughter`` -> ``grand ##daughter``) is skipped and counted; a word
    that the tokenizer reads as its unknown token is a :class:`DataError` naming the word and ``option``.
    """
    pairs = pairs or load_word_pairs()
    unk = getattr(tokenizer, "unk_token_id", None)
    words, ids, skipped = [], [], []
    for male, female in bijective_word_pairs(pairs):
        tokens = [word_token_ids(tokenizer, w) for w in (male, female)]
        for word, toks in zip((male, female), tokens, strict=True):
            if not toks or (unk is not None and unk in toks):
                raise DataError(
                    f"{option}: the word {word!r} of {pairs.source[:40]!r}... is unknown to the tokenizer "
                    f"(it reads as {getattr(tokenizer, 'unk_token', 'UNK')}); remove it from the word-pair file or "
                    "use a tokenizer whose vocabulary covers it"
                )
        if len(tokens[0]) == 1 and len(tokens[1]) == 1 and tokens[0] != tokens[1]:
            words.append((male, female))
            ids.append((tokens[0][0], tokens[1][0]))
        else:
            skipped.append((male, female))
    return TokenPairs(words, ids, skipped)
