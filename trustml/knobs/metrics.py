"""Metrics of knowledge-grounded responses, as pure functions of strings (and token log-likelihoods).

Text is normalized as in ParlAI's F1 (lowercase, punctuation and the articles a/an/the removed, whitespace split).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from trustml.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalized_tokens(text: str) -> list[str]:
    """Lowercased words of ``text`` without punctuation and articles."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def unigram_f1(hypothesis: str, reference: str) -> float:
    """Unigram F1 ``2PR / (P + R)`` of the normalized tokens (multiset overlap); 0 when either side is empty."""
    hyp, ref = normalized_tokens(hypothesis), normalized_tokens(reference)
    overlap = sum((Counter(hyp) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(hyp), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def _paired(responses: Sequence[str], others: Sequence[str], what: str) -> None:
    if len(responses) != len(others):
        raise ConfigError(f"{len(responses)} responses but {len(others)} {what}; they must pair one to one")
    if not responses:
        raise ConfigError(f"no responses to score against {what}")


def knowledge_f1(responses: Sequence[str], knowledge: Sequence[str]) -> float:
    """Mean unigram F1 between each response and its knowledge text (how much of the knowledge it uses)."""
    _paired(responses, knowledge, "knowledge texts")
    return sum(unigram_f1(r, k) for r, k in zip(responses, knowledge, strict=True)) / len(responses)


def reference_f1(responses: Sequence[str], references: Sequence[str]) -> float:
    """Mean unigram F1 between each response and the reference (human) response."""
    _paired(responses, references, "references")
    return sum(unigram_f1(r, ref) for r, ref in zip(responses, references, strict=True)) / len(responses)


def question_ratio(responses: Sequence[str]) -> float:
    """Fraction of responses that contain a question mark."""
    if not responses:
        raise ConfigError("question_ratio needs at least one response")
    return sum("?" in r for r in responses) / len(responses)


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams over all responses (lowercased whitespace tokens); 0 if none."""
    if n < 1:
        raise ConfigError(f"distinct_n needs n >= 1, got {n}")
    grams: Counter[tuple[str, ...]] = Counter()
    for response in responses:
        words = response.lower().split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def mean_length(responses: Sequence[str]) -> float:
    """Mean number of whitespace tokens per response."""
    if not responses:
        raise ConfigError("mean_length needs at least one response")
    return sum(len(r.split()) for r in responses) / len(responses)


def perplexity(token_nll: Tensor, token_mask: Tensor) -> float:
    """``exp(sum NLL / number of tokens)`` over the tokens where ``token_mask`` is true (corpus perplexity)."""
    count = token_mask.sum()
    if int(count) == 0:
        raise ConfigError("perplexity needs at least one reference token")
    return float(torch.exp((token_nll * token_mask).sum() / count))


def response_metrics(responses: Sequence[str], references: Sequence[str], knowledge: Sequence[str]) -> dict[str, float]:
    """Every string metric of a set of generated responses."""
    return {
        "knowledge_f1": knowledge_f1(responses, knowledge),
        "reference_f1": reference_f1(responses, references),
        "question_ratio": question_ratio(responses),
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "length": mean_length(responses),
    }
