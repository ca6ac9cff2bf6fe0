"""Named parameter groups of a Hugging Face encoder-decoder, for freezing and accounting.

Every parameter of BART, mBART, Pegasus, Marian, T5 and BERT2BERT (``EncoderDecoderModel``) falls into exactly one
group of :data:`PARAMETER_GROUPS`, decided by one table of name patterns (:data:`GROUP_RULES`, first match wins),
not by per-family code:

- ``layer_norms``: every LayerNorm / RMSNorm scale and bias, in the encoder, the decoder and the embeddings;
- ``embeddings``: token, position and token-type embedding tables (BART's and T5's shared table included);
- ``lm_head``: the output projection and its transform (BERT's ``cls.predictions``); often tied to the embeddings;
- ``encoder``: the rest of the encoder stack (attention, feed-forward, BERT's pooler);
- ``decoder_self_attention``: the decoder's causal self-attention (query, key, value, output projections, T5's
  relative position bias);
- ``decoder_cross_attention``: the decoder's attention over the encoder states;
- ``decoder_ffn``: the decoder's feed-forward blocks.

Two finer names select part of ``embeddings`` for freezing: ``encoder_embeddings`` (the tables under the encoder)
and ``decoder_embeddings`` (under the decoder); a table shared by both sides (BART's, T5's ``shared``) is in both.

Tied tensors (an embedding table that is also the LM head) are one tensor: it is listed under the group of the
first name ``named_parameters`` gives it, and it is frozen when any group it belongs to is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from trustml.errors import ConfigError

PARAMETER_GROUPS: tuple[str, ...] = (
    "decoder_self_attention",
    "decoder_cross_attention",
    "decoder_ffn",
    "encoder",
    "embeddings",
    "lm_head",
    "layer_norms",
)

#: Parts of ``embeddings`` that ``freeze`` also accepts (not rows of the parameter table).
EMBEDDING_PARTS: tuple[str, ...] = ("encoder_embeddings", "decoder_embeddings")
_SIDE = re.compile(r"^(model\.)?(encoder|decoder)\.")

#: ``(group, pattern)`` in the order they are tried on a parameter's dotted name; the first that matches wins.
GROUP_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (group, re.compile(pattern))
    for group, pattern in (
        ("layer_norms", r"((layer_?norm|LayerNorm|layernorm)\w*|(^|\.)ln_\w+|(^|\.)norm)\."),
        (
            "embeddings",
            r"(^|\.)(shared|embed_tokens|embed_positions|word_embeddings|position_embeddings|token_type_embeddings"
            r"|wte|wpe)\.",
        ),
        ("lm_head", r"(^|\.)(lm_head|final_logits_bias|cls\.predictions)(\.|$)"),
        ("encoder", r"^(model\.)?encoder\."),
        ("decoder_cross_attention", r"\.(encoder_attn|EncDecAttention|crossattention)\."),
        ("decoder_self_attention", r"\.(self_attn|SelfAttention|attention\.self|attention\.output\.dense|attn)\."),
        ("decoder_ffn", r"\.(fc1|fc2|DenseReluDense|intermediate|output\.dense|mlp)\."),
    )
)


def parameter_group(name: str) -> str:
    """The group of the parameter called ``name`` (a ``named_parameters`` key); ConfigError when none fits."""
    for group, pattern in GROUP_RULES:
        if pattern.search(name):
            return group
    raise ConfigError(
        f"parameter '{name}' matches no group of trustml.models.parameter_groups.GROUP_RULES; this model family "
        f"is not supported by freeze (supported: BART, mBART, Pegasus, Marian, T5, BERT2BERT); add a rule there"
    )


def selectable_groups(name: str) -> set[str]:
    """Every name ``freeze`` can select the parameter ``name`` by: its group, and for an embedding table the
    side(s) of :data:`EMBEDDING_PARTS` it sits on."""
    group = parameter_group(name)
    if group != "embeddings":
        return {group}
    side = _SIDE.match(name)
    return {group, f"{side.group(2)}_embeddings"} if side else {group, *EMBEDDING_PARTS}


def check_group_names(groups: Iterable[str], option: str) -> list[str]:
    """``groups`` as a list, each one of :data:`PARAMETER_GROUPS` or :data:`EMBEDDING_PARTS` (ConfigError naming
    ``option``)."""
    groups = list(groups)
    known = (*PARAMETER_GROUPS, *EMBEDDING_PARTS)
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ConfigError(f"{option}: unknown parameter group(s) {unknown}; choose from {list(known)}")
    return groups


@dataclass(frozen=True)
class GroupCount:
    """Parameter count of one group: how many are trainable, and where the weights came from."""

    group: str
    total: int
    trainable: int
    source: str
    tied_with: tuple[str, ...] = ()


def groups_of_tensors(module: nn.Module) -> dict[int, set[str]]:
    """``{id(tensor): names}``: every group (and embedding part) each tensor belongs to (more than one when tied)."""
    groups: dict[int, set[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), set()).update(selectable_groups(name))
    return groups


def freeze_groups(module: nn.Module, frozen: Sequence[str]) -> None:
    """Set ``requires_grad=False`` on every tensor that belongs to a group in ``frozen`` (others keep theirs: a
    fixed sinusoidal position table stays fixed)."""
    frozen_set = set(check_group_names(frozen, "freeze"))
    tensor_groups = groups_of_tensors(module)
    for param in module.parameters():
        if tensor_groups[id(param)] & frozen_set:
            param.requires_grad_(False)


def count_groups(module: nn.Module, sources: dict[str, str] | None = None) -> list[GroupCount]:
    """Per group (in :data:`PARAMETER_GROUPS` order): parameters, trainable parameters, source, tied groups.

    A tied tensor counts once, in the group of its first name. ``sources`` maps group -> where its weights came
    from (default ``model``).
    """
    sources = sources or {}
    tensor_groups = groups_of_tensors(module)
    totals = dict.fromkeys(PARAMETER_GROUPS, 0)
    trainable = dict.fromkeys(PARAMETER_GROUPS, 0)
    ties: dict[str, set[str]] = {g: set() for g in PARAMETER_GROUPS}
    for name, param in module.named_parameters():
        group = parameter_group(name)
        totals[group] += param.numel()
        trainable[group] += param.numel() if param.requires_grad else 0
        ties[group] |= (tensor_groups[id(param)] & set(PARAMETER_GROUPS)) - {group}
    return [
        GroupCount(g, totals[g], trainable[g], sources.get(g, "model"), tuple(sorted(ties[g])))
        for g in PARAMETER_GROUPS
    ]


def format_group_table(counts: Sequence[GroupCount]) -> str:
    """A plain-text table of :func:`count_groups`: group, parameters, share, state, source, ties, and a total."""
    total = sum(c.total for c in counts) or 1
    lines = [f"{'group':<24} {'parameters':>12} {'share':>7}  {'state':<9} {'source':<10} tied with"]
    for c in counts:
        state = (
            "-"
            if c.total == 0
            else "trainable"
            if c.trainable == c.total
            else "frozen"
            if c.trainable == 0
            else "partial"
        )
        lines.append(
            f"{c.group:<24} {c.total:>12,} {c.total / total:>7.1%}  {state:<9} {c.source:<10} {', '.join(c.tied_with)}"
        )
    trainable = sum(c.trainable for c in counts)
    lines.append(f"{'total':<24} {total:>12,}          trainable {trainable:,} ({trainable / total:.1%})")
    return "\n".join(lines)
