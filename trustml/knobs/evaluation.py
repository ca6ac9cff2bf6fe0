"""Generate responses with knobs for a list of examples and score them (the core of ``trustml-generate``).

For each batch: encoder inputs with segment ids from the model's builder, ``KnobGenerator.generate`` under the
knobs, and (optionally) the per-token likelihood of the reference under the same knobs. Metrics over all examples:
:func:`~trustml.knobs.metrics.response_metrics` plus the reference perplexity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trustml.data.topical_chat_grounded import Seq2SeqExample
from trustml.errors import ConfigError
from trustml.knobs.generator import KnobGenerator
from trustml.knobs.metrics import response_metrics
from trustml.models.hf_seq2seq import IGNORE_INDEX, HFSeq2SeqModel


@dataclass
class GeneratedResponse:
    """One generated response with its source, reference and origin (a row of ``generations.jsonl``)."""

    conversation_id: str
    turn_index: int
    knowledge: str
    history: str
    reference: str
    response: str


def generate_and_score(
    model: HFSeq2SeqModel,
    generator: KnobGenerator,
    examples: Sequence[Seq2SeqExample],
    batch_size: int,
    generate_kwargs: dict[str, Any],
    score_perplexity: bool = True,
) -> tuple[list[GeneratedResponse], dict[str, float]]:
    """Responses to ``examples`` generated under ``generator``'s knobs, and their metrics.

    Metrics: knowledge F1 (to the ``knowledge`` segment), reference F1, question ratio, distinct-1/2, mean length
    and, with ``score_perplexity``, the reference perplexity ``exp(sum NLL / tokens)`` over all reference tokens under
    the model with the same knobs.
    """
    if batch_size < 1:
        raise ConfigError(f"generation batch_size={batch_size} must be >= 1")
    if not examples:
        raise ConfigError("no examples to generate for; check data.split and data.max_examples")
    device = next(model.network.parameters()).device
    rows: list[GeneratedResponse] = []
    nll_sum, token_count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        sources = {k: v.to(device) for k, v in model.encode_sources(chunk).items()}
        generated = generator.generate(**sources, **generate_kwargs)
        texts = model.tokenizer.batch_decode(generated, skip_special_tokens=True)
        rows += [
            GeneratedResponse(
                e.conversation_id,
                e.turn_index,
                e.segments.get("knowledge", ""),
                e.segments.get("history", ""),
                e.target,
                text.strip(),
            )
            for e, text in zip(chunk, texts, strict=True)
        ]
        if score_perplexity:
            labels = model.encode_targets([e.target for e in chunk]).to(device)
            nll = generator.reference_token_nll(labels=labels, **sources)
            nll_sum += nll.double().sum().cpu()
            token_count += (labels != IGNORE_INDEX).sum().cpu()
    metrics = response_metrics([r.response for r in rows], [r.reference for r in rows], [r.knowledge for r in rows])
    if score_perplexity:
        if int(token_count) == 0:
            raise ConfigError("the references have no tokens, so their perplexity is undefined")
        metrics["perplexity"] = float(torch.exp(nll_sum / token_count))
    metrics["examples"] = float(len(rows))
    return rows, metrics
