"""Zero-shot control knobs for any Hugging Face encoder-decoder (Hazarika et al., arXiv 2106.06411) and
decoder-only language model (:mod:`trustml.knobs.causal_knobs`: A as PASTA-style prompt-span steering).

- A: :class:`CrossAttentionBias` — re-weight cross-attention over named encoder segments (``a' ∝ a * b``);
- B: :class:`DecoderMixing` — mix a second decoder's next-token distribution with weight ``lambda``;
- C: :func:`encode_control_phrases` / :func:`augmented_encoder_inputs` — append a pooled code of control phrases;
- D: :class:`SelfAttentionBias` — the same re-weighting on decoder self-attention.

:class:`KnobGenerator` (encoder-decoders) and :class:`CausalKnobGenerator` (decoder-only) apply them all inside
``generate()``; neutral settings reproduce ``generate()`` exactly. :class:`TemplateInputBuilder` makes inputs with
segment ids from an input template; ``method=knob_generator`` runs it all through the runner.
"""

from trustml.knobs.attention_knobs import AttentionBiasing, CrossAttentionBias, SelfAttentionBias
from trustml.knobs.causal_knobs import CausalDecoderMixing, MixingDynamicCache, PromptAttentionBiasing
from trustml.knobs.context_augmentation import append_context, augmented_encoder_inputs, encode_control_phrases
from trustml.knobs.decoder_mixing import DecoderMixing, MixingCache, mix_logits
from trustml.knobs.generator import CausalKnobGenerator, KnobGenerator, KnobSettings, knob_generator
from trustml.knobs.prompts import TemplateInputBuilder
from trustml.knobs.schedules import StepSchedule
from trustml.models.segments import SegmentedInputBuilder, SegmentSpec, SegmentVocabulary

__all__ = [
    "AttentionBiasing",
    "CausalDecoderMixing",
    "CausalKnobGenerator",
    "CrossAttentionBias",
    "DecoderMixing",
    "KnobGenerator",
    "KnobSettings",
    "MixingCache",
    "MixingDynamicCache",
    "PromptAttentionBiasing",
    "SegmentSpec",
    "SegmentVocabulary",
    "SegmentedInputBuilder",
    "SelfAttentionBias",
    "StepSchedule",
    "TemplateInputBuilder",
    "append_context",
    "augmented_encoder_inputs",
    "encode_control_phrases",
    "knob_generator",
    "mix_logits",
]
