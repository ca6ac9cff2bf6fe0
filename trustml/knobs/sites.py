"""Where attention knobs attach on a Hugging Face encoder-decoder: the decoder's attention modules.

Every attention module of transformers 5.x that dispatches through ``ALL_ATTENTION_FUNCTIONS`` (BART, Marian, T5,
BERT used as a decoder, ...) carries ``is_causal`` and ``layer_idx``; inside the decoder, the causal ones are
self-attention and the others cross-attention. Knobs change the attention mask those modules receive, through
forward pre-hooks, so the model's own eager or SDPA attention function does the rest.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.knobs.cache_argument import cache_in

#: Attention implementations whose mask is a plain tensor that an additive bias can extend.
SUPPORTED_ATTENTION = ("eager", "sdpa")
_MASK_ARGUMENTS = ("attention_mask", "mask")
_HEAD_COUNT_ATTRIBUTES = ("num_heads", "n_heads", "num_attention_heads")


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of the decoder: self- or cross-attention of layer ``layer``."""

    name: str
    module: nn.Module
    kind: Literal["self", "cross"]
    layer: int
    num_heads: int
    mask_argument: str
    mask_position: int | None

    def mask(self, args: tuple, kwargs: dict[str, Any]) -> Tensor | None:
        """The attention mask among the module's call arguments."""
        if self.mask_argument in kwargs:
            return kwargs[self.mask_argument]
        if self.mask_position is not None and self.mask_position < len(args):
            return args[self.mask_position]
        return None

    def with_mask(self, args: tuple, kwargs: dict[str, Any], mask: Tensor) -> tuple[tuple, dict[str, Any]]:
        """The call arguments with the attention mask replaced by ``mask``."""
        if self.mask_argument not in kwargs and self.mask_position is not None and self.mask_position < len(args):
            args = (*args[: self.mask_position], mask, *args[self.mask_position + 1 :])
        else:
            kwargs = {**kwargs, self.mask_argument: mask}
        return args, kwargs


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack of an encoder-decoder model (``model.get_decoder()``)."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_decoder"):
        raise ConfigError(
            f"{type(model).__name__} is not a Hugging Face encoder-decoder model; the knobs need one "
            "(AutoModelForSeq2SeqLM or EncoderDecoderModel)"
        )
    return model.get_decoder()


def attention_implementation(model: nn.Module) -> str:
    """The decoder's (or decoder-only model's) attention implementation (``config._attn_implementation``), checked
    to be supported."""
    config = decoder_of(model).config if is_encoder_decoder(model) else model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        raise ConfigError(
            f"{type(model).__name__} uses attn_implementation={implementation!r}; attention knobs need one of "
            f"{list(SUPPORTED_ATTENTION)} (load the model with attn_implementation='sdpa' or 'eager')"
        )
    return implementation


def _mask_parameter(module: nn.Module) -> tuple[str, int | None]:
    params = list(inspect.signature(module.forward).parameters.values())
    for position, param in enumerate(params):
        if param.name in _MASK_ARGUMENTS:
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            return param.name, position if positional else None
    raise ConfigError(f"{type(module).__name__}.forward has no attention mask argument ({list(_MASK_ARGUMENTS)})")


def _head_count(module: nn.Module) -> int:
    for attribute in _HEAD_COUNT_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    config = getattr(module, "config", None)  # Llama, Qwen, Mistral: the count lives in the module's config
    value = getattr(config, "num_attention_heads", None)
    if isinstance(value, int):
        return value
    raise ConfigError(f"{type(module).__name__} names its head count none of {list(_HEAD_COUNT_ATTRIBUTES)}")


def decoder_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The decoder's self- and cross-attention modules, in layer order."""
    return attention_sites(decoder_of(model), type(model).__name__)


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face encoder-decoder (else a decoder-only language model)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def causal_lm_attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The self-attention modules of a decoder-only language model, in layer order (refuses an encoder-decoder)."""
    if is_encoder_decoder(model):
        raise ConfigError(
            f"{type(model).__name__} is an encoder-decoder; prompt-span knobs are for decoder-only language models "
            "(use knobs.cross_attention to bias its encoder segments)"
        )
    return attention_sites(model, type(model).__name__)


def attention_sites(root: nn.Module, model_name: str) -> list[AttentionSite]:
    """The attention modules under ``root`` (``is_causal``: self-attention, else cross-attention), in order."""
    sites = []
    for name, module in root.named_modules():
        is_causal = getattr(module, "is_causal", None)
        layer = getattr(module, "layer_idx", None)
        if not isinstance(is_causal, bool) or not type(module).__name__.endswith("Attention"):
            continue
        if layer is None:
            raise ConfigError(f"decoder attention module {name} ({type(module).__name__}) has no layer_idx")
        mask_argument, mask_position = _mask_parameter(module)
        sites.append(
            AttentionSite(
                name=name,
                module=module,
                kind="self" if is_causal else "cross",
                layer=int(layer),
                num_heads=_head_count(module),
                mask_argument=mask_argument,
                mask_position=mask_position,
            )
        )
    if not sites:
        raise ConfigError(
            f"found no attention modules in the decoder of {model_name}; its attention does not follow "
            "the transformers 5.x module interface (is_causal, layer_idx)"
        )
    return sites


def decoder_query_positions(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(first position, number of query tokens)`` of one decoder forward, from its call arguments.

    The first position is the length of the self-attention cache (0 without a cache, i.e. teacher forcing).
    """
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None and args:
        tokens = args[0]
    if tokens is None:
        raise ConfigError("the decoder was called without input_ids or inputs_embeds; cannot tell decoding steps")
    cache = cache_in(kwargs)
    offset = int(cache.get_seq_length()) if cache is not None else 0
    return offset, int(tokens.shape[1])
