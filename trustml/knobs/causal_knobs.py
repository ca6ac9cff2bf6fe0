"""Knobs A, B, C, D on decoder-only language models (GPT-2, Llama, Qwen, Mistral, ... through Hugging Face).

A decoder-only model has no cross-attention: its prompt plays the encoder's part. With the prompt of ``P`` tokens
(left-padded, so it ends at position ``P - 1`` in every row) and decoding position ``tau = t - (P - 1)`` (``tau = 0``
is the prompt's last token, the query that predicts the first generated token, as the decoder start token is for an
encoder-decoder):

- A (prompt attention, PASTA-style steering, Zhang et al. 2023): the self-attention of every generating query
  (``tau >= 0``) to the prompt tokens of a named segment is re-weighted, ``a' = a * b / sum(a * b)`` (``log b``
  added to the attention logits of the chosen layers and heads, scaled by the schedule ``s(tau)``). Prompt
  queries (``tau < 0``) are left as they are, so the prompt is read the same with the KV cache on or off.
  :class:`PromptAttentionBias` restricts A to chosen layers, heads, or (layer, head) pairs (``layer_heads``);
  ``head_selection="profiled"`` picks the pairs by PASTA's model profiling (:mod:`~trustml.knobs.pasta`).
- D (self-attention over the generated text): decoder segments as for encoder-decoders, with the prompt as
  ``start`` (keys at ``tau < start_length``), earlier generated tokens as ``previous`` and the query as ``current``.
- C (soft prompt): the control phrases' input embeddings, pooled (:func:`pool_phrase_states`), are prepended to
  every prompt as ``C`` extra input positions (the ``control`` segment, which A can bias too).
- B (mixing two causal LMs): ``p = (1 - lambda) softmax(z1) + lambda softmax(z2)`` (or logit space) at every step;
  the secondary model reads the same tokens, its KV cache rides inside the primary's (:class:`MixingDynamicCache`).

Every knob at its neutral value installs nothing, so generation is then ``model.generate`` itself.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache

from trustml.errors import ConfigError
from trustml.knobs.attention_bias import additive_attention_mask, biased_attention_mask, segment_log_bias
from trustml.knobs.attention_knobs import (
    CrossAttentionBias,
    SelfAttentionBias,
    _head_weights,
    _select_layers,
)
from trustml.knobs.cache_argument import cache_in, cache_keyword, output_cache
from trustml.knobs.context_augmentation import Pooling, pool_phrase_states
from trustml.knobs.decoder_mixing import MIXING_SPACES, MixingSpace, PartnerCache, mix_logits
from trustml.knobs.sites import (
    AttentionSite,
    attention_implementation,
    causal_lm_attention_sites,
    decoder_query_positions,
    is_encoder_decoder,
)
from trustml.models.segments import SegmentVocabulary

_UNCHANGED = object()

#: How knob A's heads are chosen: as given (``layers``/``heads``/``layer_heads``), or by PASTA profiling.
HEAD_SELECTIONS = ("given", "profiled")


@dataclass
class PromptAttentionBias(CrossAttentionBias):
    """Knob A on a decoder-only model: bias ``b`` per named prompt segment, on chosen layers and heads.

    ``layers``/``heads`` (as in :class:`CrossAttentionBias`: the same heads in every chosen layer), or
    ``layer_heads``: explicit ``[layer, head]`` pairs (PASTA's per-head steering set). ``head_selection``:
    ``"given"`` (those options) or ``"profiled"``: before generating, :func:`~trustml.knobs.pasta.profile_heads`
    steers every candidate head alone (candidates: ``layers`` x ``heads``, default all) on the first
    ``profile_examples`` examples (or those of ``profile_file``) and keeps the ``top_k`` best.
    """

    layer_heads: list[list[int]] | None = None
    head_selection: str = "given"
    profile_examples: int = 8
    top_k: int = 4
    profile_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        knob = "knobs.prompt_attention"
        if self.head_selection not in HEAD_SELECTIONS:
            raise ConfigError(
                f"{knob}.head_selection={self.head_selection!r} is unknown; use one of {list(HEAD_SELECTIONS)}"
            )
        if self.layer_heads is not None:
            pairs = [[int(v) for v in pair] for pair in self.layer_heads]
            bad = [pair for pair in pairs if len(pair) != 2]
            if bad:
                raise ConfigError(f"{knob}.layer_heads={bad}: give [layer, head] pairs, e.g. [[0,1],[2,3]]")
            self.layer_heads = pairs
            if self.layers is not None or self.heads is not None:
                raise ConfigError(
                    f"{knob}.layer_heads names (layer, head) pairs itself; leave {knob}.layers and {knob}.heads unset"
                )
            if self.head_selection == "profiled":
                raise ConfigError(
                    f"{knob}.head_selection='profiled' chooses the (layer, head) pairs; leave {knob}.layer_heads "
                    "unset (or use head_selection='given' with your pairs)"
                )
        if self.profile_examples < 1:
            raise ConfigError(f"{knob}.profile_examples={self.profile_examples} must be >= 1")
        if self.top_k < 1:
            raise ConfigError(f"{knob}.top_k={self.top_k} must be >= 1 (the number of heads to steer)")
        if self.head_selection == "profiled" and self.is_neutral:
            raise ConfigError(
                f"{knob}.head_selection='profiled' ranks heads by steering them, but every bias value is 1; set "
                f"{knob}.values.<segment> (e.g. +method.knobs.prompt_attention.values.instruction=5)"
            )
        if self.profile_file is not None and self.head_selection != "profiled":
            raise ConfigError(f"{knob}.profile_file is read by head_selection='profiled' only; set that or drop it")


def layer_head_weights(sites: list[AttentionSite], pairs: list[list[int]], knob: str) -> dict[int, Tensor]:
    """0/1 head weights ``[H]`` per layer for explicit ``[layer, head]`` ``pairs`` (layers absent: not steered)."""
    heads_of = {site.layer: site.num_heads for site in sites}
    weights: dict[int, Tensor] = {}
    for layer, head in pairs:
        if layer not in heads_of:
            raise ConfigError(f"{knob}.layer_heads: layer {layer} does not exist; layers are {sorted(heads_of)}")
        if not 0 <= head < heads_of[layer]:
            raise ConfigError(
                f"{knob}.layer_heads: head {head} of layer {layer} out of range; it has {heads_of[layer]} heads "
                f"(0..{heads_of[layer] - 1})"
            )
        weights.setdefault(layer, torch.zeros(heads_of[layer]))[head] = 1.0
    return weights


def _steered_sites(
    sites: list[AttentionSite], rule: CrossAttentionBias | SelfAttentionBias, knob: str
) -> list[tuple[AttentionSite, Tensor | None]]:
    """The attention sites a rule steers, each with its 0/1 head weights (``None``: every head)."""
    if getattr(rule, "head_selection", "given") == "profiled" and getattr(rule, "layer_heads", None) is None:
        raise ConfigError(
            f"{knob}.head_selection='profiled': the heads are not profiled yet; run trustml.knobs.pasta.profile_heads "
            "and steer with its with_heads() rule"
        )
    pairs = getattr(rule, "layer_heads", None)
    if pairs is not None:
        weights = layer_head_weights(sites, pairs, knob)
        return [(site, weights[site.layer]) for site in sites if site.layer in weights]
    chosen = _select_layers(sites, rule.layers, knob)
    heads = _head_weights(rule.heads, chosen, knob)
    return [(site, heads) for site in chosen]


def prompt_segment_ids(query: Tensor, key_length: int, prompt_length: int, start_length: int) -> Tensor:
    """Knob D's segment id (0 ``start``, 1 ``previous``, 2 ``current``) of each (query, key) pair ``[Q, K]`` in a
    decoder-only model: keys at ``tau = k - (P - 1) < start_length`` are ``start`` (the prompt, with the default
    ``start_length = 1``), the query's own position is ``current``, other keys ``previous``."""
    keys = torch.arange(key_length, device=query.device)
    tau = keys - (prompt_length - 1)
    segment = torch.where(tau < start_length, 0, 1).expand(query.numel(), key_length)
    return torch.where(keys[None, :] == query[:, None], 2, segment)


class PromptAttentionBiasing:
    """Context manager: knobs A (``prompt``: bias on named prompt segments) and D (``self_attention``) on the
    self-attention of a decoder-only ``model`` inside ``with``.

    ``segment_ids`` ``[B, P]`` name every prompt position (0 for padding and template text); generation rows
    expanded by ``generate()`` (beams, samples) repeat each input row. Neutral knobs install nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        prompt: CrossAttentionBias | None = None,
        self_attention: SelfAttentionBias | None = None,
        segment_ids: Tensor | None = None,
        vocabulary: SegmentVocabulary | None = None,
    ) -> None:
        self.model = model
        self.prompt = prompt if prompt is not None and not prompt.is_neutral else None
        self.self_attention = self_attention if self_attention is not None and not self_attention.is_neutral else None
        self._handles: list[RemovableHandle] = []
        self._positions: Tensor | None = None
        self._memo: dict[tuple, Any] = {}
        self._expanded: dict[int, Tensor] = {}
        if segment_ids is None or segment_ids.dim() != 2:
            raise ConfigError("prompt knobs need segment_ids [batch, prompt length] aligned with the prompt")
        self.prompt_length = int(segment_ids.shape[1])
        self._log_bias: Tensor | None = None
        if self.prompt is not None:
            if vocabulary is None:
                raise ConfigError("prompt attention bias (knob A) needs the SegmentVocabulary naming the segments")
            self._log_bias = segment_log_bias(segment_ids, vocabulary.log_values(self.prompt.values))

    @property
    def active(self) -> bool:
        """Whether any knob here changes attention."""
        return self.prompt is not None or self.self_attention is not None

    def __enter__(self) -> PromptAttentionBiasing:
        if not self.active:
            return self
        attention_implementation(self.model)
        sites = [s for s in causal_lm_attention_sites(self.model) if s.kind == "self"]
        try:
            by_module: dict[int, tuple[AttentionSite, list]] = {}
            for knob, rule, fn in (
                ("prompt_attention", self.prompt, self._prompt_bias),
                ("self_attention", self.self_attention, self._decoder_bias),
            ):
                if rule is None:
                    continue
                for site, heads in _steered_sites(sites, rule, knob):
                    by_module.setdefault(id(site.module), (site, []))[1].append((fn, heads))
            for site, parts in by_module.values():
                self._install(site, parts)
            self._handles.append(self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        except Exception:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._memo.clear()
        self._positions = None

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        offset, length = decoder_query_positions(args, kwargs)
        self._positions = torch.arange(offset, offset + length)
        self._memo.clear()

    def _install(self, site: AttentionSite, parts: list) -> None:
        # Layers steered alike (same rules, same heads) share one biased mask per forward.
        steering = tuple((fn, None if heads is None else tuple(heads.tolist())) for fn, heads in parts)

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            mask = site.mask(args, kwargs)
            hidden = args[0] if args else kwargs["hidden_states"]
            key = (steering, id(mask), hidden.shape[0])
            if key not in self._memo:
                self._memo[key] = self._biased_mask(mask, hidden, parts)
            new_mask = self._memo[key]
            return None if new_mask is _UNCHANGED else site.with_mask(args, kwargs, new_mask)

        self._handles.append(site.module.register_forward_pre_hook(hook, with_kwargs=True))

    def _biased_mask(self, mask: Tensor | None, hidden: Tensor, parts: list) -> Any:
        if self._positions is None:
            raise RuntimeError("prompt knob called outside a model forward")
        positions = self._positions.to(hidden.device)
        key_length = mask.shape[-1] if mask is not None else int(positions[-1]) + 1
        biases = []
        for fn, heads in parts:
            # A rule's bias over every head depends on the forward only: computed once, shared by the layers.
            key = (fn, id(mask), hidden.shape[0])
            if key not in self._memo:
                self._memo[key] = fn(positions, key_length, hidden)
            bias = self._memo[key]
            if bias is not None:
                biases.append(bias if heads is None else bias * heads.to(bias)[None, :, None, None])
        if not biases:
            return _UNCHANGED
        dtype = mask.dtype if mask is not None and mask.is_floating_point() else hidden.dtype
        base = additive_attention_mask(mask, positions, key_length, causal=True, dtype=dtype)
        return biased_attention_mask(base, functools.reduce(operator.add, biases))

    def _tau_strengths(self, rule: CrossAttentionBias | SelfAttentionBias, positions: Tensor) -> Tensor | None:
        tau = positions - (self.prompt_length - 1)
        strengths = rule.schedule.strengths(tau) * (tau >= 0)
        return strengths if bool(strengths.any()) else None

    def _rows(self, batch: int, device: torch.device) -> Tensor:
        if batch not in self._expanded:
            base = self._log_bias
            if batch % base.shape[0]:
                raise ConfigError(
                    f"segment_ids cover {base.shape[0]} prompts but the model runs {batch} rows; pass the segment "
                    "ids of exactly the batch given to generate()"
                )
            self._expanded[batch] = base.repeat_interleave(batch // base.shape[0], dim=0).to(device)
        return self._expanded[batch]

    def _prompt_bias(self, positions: Tensor, key_length: int, hidden: Tensor) -> Tensor | None:
        strengths = self._tau_strengths(self.prompt, positions)
        if strengths is None:
            return None
        rows = self._rows(hidden.shape[0], hidden.device)
        if key_length < self.prompt_length:
            raise ConfigError(f"the attention sees {key_length} keys, fewer than the {self.prompt_length}-token prompt")
        keys = torch.cat([rows, rows.new_zeros(rows.shape[0], key_length - self.prompt_length)], dim=1)
        return keys[:, None, None, :] * strengths.to(keys)[None, None, :, None]

    def _decoder_bias(self, positions: Tensor, key_length: int, hidden: Tensor) -> Tensor | None:
        rule = self.self_attention
        strengths = self._tau_strengths(rule, positions)
        if strengths is None:
            return None
        segments = prompt_segment_ids(positions, key_length, self.prompt_length, rule.start_length)
        return (rule.log_values().to(hidden.device)[segments] * strengths.to(hidden.device)[:, None])[None, None]


@torch.no_grad()
def soft_prompt_code(model: nn.Module, tokenizer: Any, phrases: Sequence[str], pooling: Pooling = "positionwise"):
    """Knob C's soft prompt ``[C, d]``: the input embeddings of ``phrases`` (no special tokens), pooled."""
    if not phrases:
        raise ConfigError("context augmentation needs at least one control phrase")
    device = model.get_input_embeddings().weight.device
    enc = tokenizer(list(phrases), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    states = model.get_input_embeddings()(enc["input_ids"])
    return pool_phrase_states(states, enc["attention_mask"], pooling)


def prepend_soft_prompt(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor, code: Tensor, control: int
) -> tuple[dict[str, Tensor], Tensor]:
    """``generate()`` inputs with the soft prompt in front of every (left-padded) prompt: ``inputs_embeds``
    ``[B, C + P, d]``, the attention mask and the segment ids (``control`` for the code) extended to match."""
    embeds = model.get_input_embeddings()(input_ids)
    batch = input_ids.shape[0]
    code = code.to(embeds)[None].expand(batch, -1, -1)
    mask = torch.cat([attention_mask.new_ones(batch, code.shape[1]), attention_mask], dim=1)
    segments = torch.cat([segment_ids.new_full((batch, code.shape[1]), control), segment_ids], dim=1)
    return {"inputs_embeds": torch.cat([code, embeds], dim=1), "attention_mask": mask}, segments


class MixingDynamicCache(PartnerCache, DynamicCache):
    """The primary model's KV cache carrying the secondary model's (``partner``): beam reordering, cropping and
    batch selection act on both, so the two models stay aligned."""


def _vocab_rows(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


class CausalDecoderMixing:
    """Context manager: inside ``with``, ``primary``'s next-token scores are mixed with ``secondary``'s (knob B on
    two causal LMs sharing a tokenizer). ``weight = 0`` installs nothing; with a KV cache, ``generate()`` must get
    :meth:`new_cache` as its cache."""

    def __init__(
        self, primary: nn.Module, secondary: nn.Module | None, weight: float, space: MixingSpace = "probability"
    ) -> None:
        if space not in MIXING_SPACES:
            raise ConfigError(f"mixing space={space!r} is unknown; use one of {list(MIXING_SPACES)}")
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"mixing weight lambda={weight} must lie in [0, 1] (0 = primary only)")
        if weight > 0.0:
            if secondary is None:
                raise ConfigError(f"mixing weight lambda={weight} > 0 needs a secondary model (method.secondary_model)")
            if is_encoder_decoder(secondary):
                raise ConfigError("the secondary model is an encoder-decoder; a decoder-only model mixes with another")
            if _vocab_rows(primary) != _vocab_rows(secondary):
                raise ConfigError(
                    f"the models predict different vocabularies ({_vocab_rows(primary)} vs {_vocab_rows(secondary)} "
                    "tokens); mixing needs models that share the tokenizer"
                )
        self.primary, self.secondary, self.weight, self.space = primary, secondary, float(weight), space
        self._handle: RemovableHandle | None = None

    @property
    def active(self) -> bool:
        """Whether the mixture differs from the primary model alone."""
        return self.weight > 0.0

    @property
    def cache_keyword(self) -> str:
        """The keyword the primary's ``generate()`` takes a cache by."""
        return cache_keyword(self.primary)

    def new_cache(self) -> MixingDynamicCache:
        """An empty primary cache that also carries the secondary's."""
        return MixingDynamicCache(config=self.primary.config.get_text_config(decoder=True))

    def __enter__(self) -> CausalDecoderMixing:
        if self.active:
            self._handle = self.primary.register_forward_hook(self._mix, with_kwargs=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _mix(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        cache = cache_in(kwargs)
        if cache is not None and not isinstance(cache, MixingDynamicCache):
            raise ConfigError(
                f"decoder mixing with a KV cache needs generate({self.cache_keyword}=mixing.new_cache()), so the "
                "secondary model's cache follows beam search"
            )
        if kwargs.get("input_ids") is None:
            raise ConfigError("decoder mixing of causal LMs reads input_ids; it does not combine with a soft prompt")
        extra = {k: kwargs[k] for k in ("position_ids", "logits_to_keep") if kwargs.get(k) is not None}
        secondary_out = self.secondary(
            input_ids=kwargs["input_ids"],
            attention_mask=kwargs.get("attention_mask"),
            use_cache=cache is not None,
            return_dict=True,
            **extra,
            **({cache_keyword(self.secondary): cache.partner} if cache is not None else {}),
        )
        if cache is not None:
            cache.partner = output_cache(secondary_out)
        output.logits = mix_logits(output.logits.float(), secondary_out.logits.float(), self.weight, self.space)
        return output
