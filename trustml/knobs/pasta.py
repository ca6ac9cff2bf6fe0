"""PASTA head selection for knob A on decoder-only models (Zhang et al. 2023, "Tell your model where to attend:
post-hoc attention steering for LLMs", Sec. 3.2 "model profiling").

PASTA steers only a small set of attention heads, found by profiling: every attention head ``(l, h)`` is steered
*alone* on a few examples of the task, the task metric is evaluated under that steering, heads are ranked by it,
and the ``top_k`` best are steered together at inference. (The paper's multi-task variant intersects the top-k sets
of several tasks; profiling one task, as here, is its task-specific variant.)

The task metric here is the reference likelihood: for the candidate head alone steered with the knob's own values
and schedule (:class:`~trustml.knobs.causal_knobs.PromptAttentionBias`), the mean per-token negative log-likelihood
of the examples' references continuing their prompts (teacher forcing, :meth:`CausalKnobGenerator.reference_token_nll`)

    score(l, h) = sum_i sum_t NLL_i,t(steer {(l, h)}) / sum_i T_i        (lower is better).

The paper scores each head by the task's accuracy of generated answers; the likelihood of the references is the
same ranking signal without decoding, so one forward pass per head and batch. Ties are broken by (layer, head), so
profiling is deterministic. Knobs B, C, D are off while profiling (knob A alone, as in the paper). Cost:
``layers x heads`` teacher-forced forward passes over the profiling examples, plus one neutral pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from trustml.errors import ConfigError, DataError
from trustml.knobs.causal_knobs import PromptAttentionBias
from trustml.knobs.generator import CausalKnobGenerator, KnobSettings
from trustml.knobs.sites import causal_lm_attention_sites
from trustml.models.segments import SegmentVocabulary

#: One profiling batch: prompt ``input_ids``, ``attention_mask`` and ``segment_ids`` ``[B, P]`` (left-padded), and
#: the reference ``targets`` ``[B, T]`` (``-100`` at padding).
ProfileBatch = dict[str, Tensor]


@dataclass
class HeadProfile:
    """Result of :func:`profile_heads`: the chosen ``heads`` (``[layer, head]`` pairs, best first), the score of
    every candidate head (mean reference NLL per token with that head alone steered), the neutral score and the
    number of profiling examples and reference tokens."""

    heads: list[list[int]]
    scores: dict[tuple[int, int], float]
    neutral_score: float
    examples: int
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record (for the run's metadata)."""
        return {
            "method": "pasta_profiling",
            "metric": "reference_nll_per_token",
            "heads": self.heads,
            "neutral_score": self.neutral_score,
            "scores": [{"layer": layer, "head": head, "score": s} for (layer, head), s in sorted(self.scores.items())],
            "examples": self.examples,
            "tokens": self.tokens,
        }

    def with_heads(self, rule: PromptAttentionBias) -> PromptAttentionBias:
        """``rule`` steering exactly the chosen heads (``head_selection='given'``, ``layer_heads`` = the heads)."""
        return replace(
            rule,
            layers=None,
            heads=None,
            layer_heads=[list(p) for p in self.heads],
            head_selection="given",
            profile_file=None,
        )


def candidate_heads(model: nn.Module, rule: PromptAttentionBias) -> list[tuple[int, int]]:
    """The (layer, head) pairs profiling tries: the self-attention layers in ``rule.layers`` (all when unset) times
    the heads in ``rule.heads`` (all when unset), in (layer, head) order."""
    sites = [s for s in causal_lm_attention_sites(model) if s.kind == "self"]
    layers = sorted({s.layer for s in sites})
    if rule.layers is not None:
        bad = [layer for layer in rule.layers if layer not in layers]
        if bad:
            raise ConfigError(f"knobs.prompt_attention.layers {bad} do not exist; the model's layers are {layers}")
    pairs = []
    for site in sorted(sites, key=lambda s: s.layer):
        if rule.layers is not None and site.layer not in rule.layers:
            continue
        if rule.heads is not None:
            bad = [h for h in rule.heads if not 0 <= h < site.num_heads]
            if bad:
                raise ConfigError(
                    f"knobs.prompt_attention.heads {bad} out of range; layer {site.layer} has {site.num_heads} heads"
                )
        heads = rule.heads if rule.heads is not None else range(site.num_heads)
        pairs += [(site.layer, int(h)) for h in sorted(set(heads))]
    return pairs


def _mean_nll(generator: CausalKnobGenerator, batches: list[ProfileBatch]) -> tuple[float, int]:
    total, tokens = 0.0, 0
    for batch in batches:
        targets = batch["targets"]
        nll = generator.reference_token_nll(
            batch["input_ids"], batch["attention_mask"], targets, segment_ids=batch["segment_ids"]
        )
        total += float(nll.double().sum())
        tokens += int((targets != -100).sum())
    return total / tokens, tokens


@torch.no_grad()
def profile_heads(
    model: nn.Module,
    tokenizer: Any,
    rule: PromptAttentionBias,
    vocabulary: SegmentVocabulary,
    batches: list[ProfileBatch],
) -> HeadProfile:
    """PASTA model profiling (module doc): steer each candidate head alone with ``rule``'s values and schedule on
    ``batches``, rank by mean reference NLL per token (ascending, ties by (layer, head)), keep ``rule.top_k``."""
    if rule.is_neutral:
        raise ConfigError("PASTA profiling steers heads with knobs.prompt_attention.values; every value is 1")
    if not batches or not any(int((b["targets"] != -100).sum()) for b in batches):
        raise DataError("PASTA profiling got no example with a reference; the profiling examples need references")
    candidates = candidate_heads(model, rule)
    if rule.top_k > len(candidates):
        raise ConfigError(
            f"knobs.prompt_attention.top_k={rule.top_k} exceeds the {len(candidates)} candidate heads "
            "(layers x heads); lower top_k"
        )
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    neutral, tokens = _mean_nll(CausalKnobGenerator(model, tokenizer, KnobSettings(), vocabulary=vocabulary), batches)
    scores: dict[tuple[int, int], float] = {}
    base = replace(rule, layers=None, heads=None, layer_heads=None, head_selection="given", profile_file=None)
    for layer, head in candidates:
        single = replace(base, layer_heads=[[layer, head]])
        generator = CausalKnobGenerator(model, tokenizer, KnobSettings(prompt_attention=single), vocabulary=vocabulary)
        scores[(layer, head)], _ = _mean_nll(generator, batches)
    ranked = sorted(candidates, key=lambda pair: (scores[pair], pair))
    return HeadProfile(
        heads=[list(p) for p in ranked[: rule.top_k]],
        scores=scores,
        neutral_score=neutral,
        examples=examples,
        tokens=tokens,
    )
