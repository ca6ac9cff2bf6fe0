"""Zero-shot control knobs for any Hugging Face encoder-decoder (Hazarika et al., arXiv 2106.06411).

- A: :class:`CrossAttentionBias` — re-weight cross-attention over named encoder segments (``a' ∝ a * b``);
- B: :class:`DecoderMixing` — mix a second decoder's next-token distribution with weight ``lambda``;
- C: :func:`encode_control_phrases` / :func:`augmented_encoder_inputs` — append a pooled code of control phrases;
- D: :class:`SelfAttentionBias` — the same re-weighting on decoder self-attention.

:class:`KnobGenerator` applies them all inside ``generate()``; neutral settings reproduce ``generate()`` exactly.
"""

from trustml.knobs.attention_knobs import AttentionBiasing, CrossAttentionBias, SelfAttentionBias
from trustml.knobs.context_augmentation import append_context, augmented_encoder_inputs, encode_control_phrases
from trustml.knobs.decoder_mixing import DecoderMixing, MixingCache, mix_logits
from trustml.knobs.generator import KnobGenerator, KnobSettings
from trustml.knobs.schedules import StepSchedule
from trustml.models.segments import SegmentedInputBuilder, SegmentSpec, SegmentVocabulary

__all__ = [
    "AttentionBiasing",
    "CrossAttentionBias",
    "DecoderMixing",
    "KnobGenerator",
    "KnobSettings",
    "MixingCache",
    "SegmentSpec",
    "SegmentVocabulary",
    "SegmentedInputBuilder",
    "SelfAttentionBias",
    "StepSchedule",
    "append_context",
    "augmented_encoder_inputs",
    "encode_control_phrases",
    "mix_logits",
]
