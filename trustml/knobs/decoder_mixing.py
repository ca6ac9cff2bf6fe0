"""Knob B: mix two decoders over the same encoder space at every decoding step.

With next-token logits ``z1`` (the primary, e.g. the response model) and ``z2`` (the secondary, e.g. an
autoencoder that reconstructs the input) and weight ``lambda``:

- probability space: ``p = (1 - lambda) softmax(z1) + lambda softmax(z2)`` (the model returns ``log p``);
- logit space: ``z = (1 - lambda) z1 + lambda z2``.

:class:`DecoderMixing` replaces the primary's output logits by the mixture (a forward hook), so every
``generate()`` strategy and logits processor sees the mixed distribution. The secondary decoder reads the primary's
encoder states; its KV cache rides inside the primary's cache (:class:`MixingCache`), so beam search reorders both.
The cache keyword (``cache`` from transformers 5.24, ``past_key_values`` before) is read off the installed version.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from trustml.errors import ConfigError
from trustml.knobs.cache_argument import cache_given, cache_in, cache_keyword, output_cache

MIXING_SPACES = ("probability", "logit")
MixingSpace = Literal["probability", "logit"]


def mix_logits(primary: Tensor, secondary: Tensor, weight: float, space: MixingSpace) -> Tensor:
    """The mixed next-token scores of two decoders (``[..., vocab]``), as defined in the module docstring."""
    if space == "logit":
        return (1.0 - weight) * primary + weight * secondary
    if weight == 0.0:
        return F.log_softmax(primary, dim=-1)
    if weight == 1.0:
        return F.log_softmax(secondary, dim=-1)
    return torch.logaddexp(
        F.log_softmax(primary, dim=-1) + math.log1p(-weight), F.log_softmax(secondary, dim=-1) + math.log(weight)
    )


class PartnerCache:
    """Mixin for a KV cache that carries a second model's cache (``partner``) along: beam reordering, cropping and
    batch selection in ``generate()`` act on both, so the two models stay aligned (knob B on either family)."""

    partner: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.partner = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.partner = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)  # type: ignore[misc]
        if self.partner is not None:
            self.partner.reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # type: ignore[misc]
        if self.partner is not None:
            self.partner.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)  # type: ignore[misc]
        if self.partner is not None:
            self.partner.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)  # type: ignore[misc]
        if self.partner is not None:
            self.partner.batch_select_indices(indices)


class MixingCache(PartnerCache, EncoderDecoderCache):
    """The primary decoder's cache, carrying the secondary decoder's cache (``partner``) along.

    Beam reordering, cropping and batch selection in ``generate()`` act on both, so the two decoders stay aligned.
    """


def _encoder_width(model: nn.Module) -> int:
    config = model.get_encoder().config
    return int(config.hidden_size)


def _vocab_size(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


class DecoderMixing:
    """Context manager: inside ``with``, ``primary``'s logits are mixed with ``secondary``'s (knob B).

    ``weight = 0`` is neutral (nothing is installed). With a KV cache, ``generate()`` must get
    ``mixing.new_cache()`` as its cache (``cache=`` from transformers 5.24, ``past_key_values=`` before; or use
    :meth:`generate`), so the secondary's cache follows beam search.
    """

    def __init__(
        self, primary: nn.Module, secondary: nn.Module | None, weight: float, space: MixingSpace = "probability"
    ) -> None:
        if space not in MIXING_SPACES:
            raise ConfigError(f"mixing space={space!r} is unknown; use one of {list(MIXING_SPACES)}")
        if not (0.0 <= weight <= 1.0):
            raise ConfigError(f"mixing weight lambda={weight} must lie in [0, 1] (0 = primary only)")
        if weight > 0.0:
            if secondary is None:
                raise ConfigError(f"mixing weight lambda={weight} > 0 needs a secondary model (e.g. the autoencoder)")
            if _vocab_size(primary) != _vocab_size(secondary):
                raise ConfigError(
                    f"the decoders have different vocabularies ({_vocab_size(primary)} vs {_vocab_size(secondary)} "
                    "tokens); mixing needs models that share the tokenizer"
                )
            if _encoder_width(primary) != _encoder_width(secondary):
                raise ConfigError(
                    f"the encoders have different widths ({_encoder_width(primary)} vs {_encoder_width(secondary)}); "
                    "mixing needs two decoders over the same encoder space"
                )
        self.primary, self.secondary, self.weight, self.space = primary, secondary, float(weight), space
        self._handle: RemovableHandle | None = None

    @property
    def active(self) -> bool:
        """Whether the mixture differs from the primary model alone."""
        return self.weight > 0.0

    def new_cache(self) -> MixingCache:
        """An empty cache for ``generate()`` (:attr:`cache_keyword`) that also holds the secondary decoder's cache."""
        config = self.primary.config.get_text_config(decoder=True)
        return MixingCache(DynamicCache(config=config), DynamicCache(config=config))

    @property
    def cache_keyword(self) -> str:
        """The keyword the primary's ``generate()`` takes a cache by (``cache`` or ``past_key_values``)."""
        return cache_keyword(self.primary)

    def generate(self, **generate_kwargs: Any) -> Tensor:
        """``primary.generate(**generate_kwargs)`` with the mixture, giving it a :class:`MixingCache` when caching."""
        with self:
            if self.active and generate_kwargs.get("use_cache", True) and not cache_given(generate_kwargs):
                generate_kwargs[self.cache_keyword] = self.new_cache()
            return self.primary.generate(**generate_kwargs)

    def __enter__(self) -> DecoderMixing:
        if self.active:
            self._handle = self.primary.register_forward_hook(self._mix, with_kwargs=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _mix(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        cache = cache_in(kwargs)
        if cache is not None and not isinstance(cache, MixingCache):
            raise ConfigError(
                f"decoder mixing with a KV cache needs generate({self.cache_keyword}=mixing.new_cache()) "
                "(or DecoderMixing.generate), so the secondary decoder's cache follows beam search"
            )
        if not hasattr(output, "logits"):
            raise ConfigError("decoder mixing needs model outputs with .logits; call the model with return_dict=True")
        labels = kwargs.get("labels")
        secondary_out = self.secondary(
            encoder_outputs=BaseModelOutput(last_hidden_state=output.encoder_last_hidden_state),
            attention_mask=kwargs.get("attention_mask"),
            decoder_input_ids=kwargs.get("decoder_input_ids"),
            decoder_attention_mask=kwargs.get("decoder_attention_mask"),
            labels=labels,
            use_cache=cache is not None,
            return_dict=True,
            **({cache_keyword(self.secondary): cache.partner} if cache is not None else {}),
        )
        if cache is not None:
            cache.partner = output_cache(secondary_out)
        output.logits = mix_logits(output.logits.float(), secondary_out.logits.float(), self.weight, self.space)
        if labels is not None:
            output.loss = F.cross_entropy(output.logits.flatten(0, 1), labels.flatten().to(output.logits.device))
        return output
