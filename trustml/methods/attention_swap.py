"""``method=attention_swap``: train an encoder-decoder with a donor's decoder self-attention, frozen groups and all.

Hazarika et al. (arXiv 2106.06411, section on knob D) conjecture that the decoder self-attention of an
encoder-decoder mainly keeps the output fluent, so it can come from another fluent model and stay frozen: "in
some cases 44% fewer trained weights and still pretty competitive numbers". This method is ``method=seq2seq``'s
token cross-entropy on a model whose decoder self-attention was first replaced by ``donor``'s
(:func:`~trustml.models.attention_transplant.transplant_self_attention`) and whose ``freeze`` groups
(:data:`~trustml.models.parameter_groups.PARAMETER_GROUPS`) do not train: the optimizer receives only the
trainable tensors, so frozen ones have no optimizer state. The parameter table (group, size, state, source) is
logged when the method is built; the run's ``results.json`` records ``params_total``, ``params_trainable`` and
``trainable_fraction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from trustml.errors import ConfigError
from trustml.methods.base import OptimizerFactory
from trustml.methods.seq2seq import Seq2SeqMethod
from trustml.models.attention_transplant import DONOR_KEYWORDS, swap_self_attention
from trustml.models.parameter_groups import (
    GroupCount,
    check_group_names,
    count_groups,
    format_group_table,
    freeze_groups,
)
from trustml.registry import register

log = logging.getLogger(__name__)


@dataclass
class AttentionSwapConfig:
    """Options of ``method=attention_swap``.

    ``donor``: where the decoder self-attention comes from — a completed trustml run directory, a Hugging Face
    name or local path (encoder-decoder, decoder-only LM, or an encoder with the same attention shapes), ``none``
    (keep the model's own) or ``random`` (re-drawn from the model's initialiser: the control arm).
    ``layer_map``: the donor layer feeding each decoder layer (default one-to-one). ``freeze``: parameter groups
    that do not train. ``donor_checkpoint``: ``best`` or ``last`` when the donor is a run.
    """

    donor: str = "none"
    layer_map: list[int] | None = None
    freeze: list[str] = field(default_factory=lambda: ["decoder_self_attention"])
    donor_checkpoint: str = "best"

    def __post_init__(self) -> None:
        self.freeze = check_group_names(self.freeze, "method.freeze")
        if self.donor_checkpoint not in ("best", "last"):
            raise ConfigError(f"method.donor_checkpoint={self.donor_checkpoint!r} must be 'best' or 'last'")
        if self.layer_map is not None and self.donor in DONOR_KEYWORDS:
            raise ConfigError(
                f"method.layer_map is set but method.donor={self.donor!r} has no layers to map; give a donor or "
                "drop layer_map"
            )


@register("method", "attention_swap", dataclass=AttentionSwapConfig)
class AttentionSwapMethod(Seq2SeqMethod):
    """Seq2seq training with a transplanted (``donor``) decoder self-attention and frozen parameter groups."""

    def __init__(
        self, config: AttentionSwapConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int = 0
    ) -> None:
        super().__init__(config, model=model, optimizer=optimizer, num_classes=num_classes)
        network = model.network
        source = swap_self_attention(network, config.donor, config.layer_map, config.donor_checkpoint)
        freeze_groups(network, config.freeze)
        self.parameter_groups: list[GroupCount] = count_groups(network, {"decoder_self_attention": source})
        if not any(c.trainable for c in self.parameter_groups):
            raise ConfigError(
                f"method.freeze={config.freeze} freezes every parameter of the model; leave at least one group "
                "trainable"
            )
        log.info(
            "attention_swap parameter groups (donor=%s):\n%s", config.donor, format_group_table(self.parameter_groups)
        )
