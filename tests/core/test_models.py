"""Model plugins: MLP and the Hugging Face encoder classifier (tiny random encoders; MiniLM offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_BERT_CONFIG
from trustml.errors import ConfigError
from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig, mean_pool
from trustml.models.mlp import MLP, MLPConfig


def test_mlp_embed_and_head() -> None:
    model = MLP(MLPConfig(hidden_sizes=[8, 4], norm="layer"), num_classes=3, input_dim=5).eval()
    x = torch.randn(7, 5)
    assert model.embed(x).shape == (7, 4) and model(x).shape == (7, 3)
    assert torch.allclose(model(x), model.head(model.embed(x)))


def test_mlp_rejects_text_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="model=hf_encoder"):
        MLP(MLPConfig(), num_classes=2, input_dim=None)
    with pytest.raises(ConfigError, match="model.norm"):
        MLP(MLPConfig(norm="weird"), num_classes=2, input_dim=3)


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).item() == pytest.approx(2.0)


def test_cached_embeddings_are_computed_once_and_reused(tmp_path: Path) -> None:
    texts = ["hello world", "a longer sentence with more tokens", "short"]
    model = HFEncoderClassifier(
        HFEncoderConfig(random_init_config=TINY_BERT_CONFIG, cache_dir=str(tmp_path)), num_classes=2
    )
    first = model.featurize(texts)
    assert first.shape == (3, 16) and len(list(tmp_path.glob("*.pt"))) == 1
    assert model(first).shape == (3, 2)
    assert not any(k.startswith("encoder") for k in model.state_dict())  # frozen encoder stays out of checkpoints
    model._frozen_encoder.embeddings.word_embeddings.weight.data.zero_()  # a cache hit does not touch the encoder
    assert torch.equal(model.featurize(texts), first)


def test_padding_in_a_batch_does_not_change_a_texts_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HFEncoderClassifier(
        HFEncoderConfig(random_init_config=TINY_BERT_CONFIG, cache_dir=str(tmp_path)), num_classes=2
    ).eval()
    texts = ["short", "a much longer sentence with many more tokens than the first one"]

    def pooled(batch: list[str], **padding: object) -> torch.Tensor:
        tokens = model.tokenizer(batch, return_tensors="pt", **padding)
        return model.pool(tokens["input_ids"], tokens["attention_mask"])

    alone = pooled(texts[:1])[0]
    mask = model.tokenizer(texts, padding=True, return_tensors="pt")["attention_mask"]
    assert mask[0].sum() < mask[1].sum() == mask.shape[1]  # in the batch the short text is padded
    batched = pooled(texts, padding=True)
    # padded to the batch's longest text, to a fixed length beyond it, and through the cached featurize path
    for embeddings in (batched, pooled(texts, padding="max_length", max_length=48), model.featurize(texts)):
        torch.testing.assert_close(embeddings[0], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(embeddings[1], pooled(texts[1:])[0], rtol=1e-5, atol=1e-6)
    # the embedding depends on the text (so the equality above is not that of a constant)
    assert (alone - batched[1]).abs().max() > 1e-2


def test_finetuning_last_layers_trains_only_those(tmp_path: Path) -> None:
    model = HFEncoderClassifier(
        HFEncoderConfig(random_init_config=TINY_BERT_CONFIG, trainable_last_layers=1, cache_dir=str(tmp_path)),
        num_classes=2,
    )
    tokens = model.featurize(["one text", "another text here"])
    assert set(tokens) == {"input_ids", "attention_mask"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith("encoder.encoder.layer.0.") for n in trainable)
    model(tokens).sum().backward()
    assert model.encoder.encoder.layer[1].output.dense.weight.grad is not None
    with pytest.raises(ConfigError, match="has 2 layers"):
        HFEncoderClassifier(
            HFEncoderConfig(random_init_config=TINY_BERT_CONFIG, trainable_last_layers=5), num_classes=2
        )
    with pytest.raises(ConfigError, match="model.freeze_encoder=false trains all of it"):
        HFEncoderConfig(random_init_config=TINY_BERT_CONFIG, trainable_last_layers=1, freeze_encoder=False)


def test_offline_minilm_loads_from_its_package(tmp_path: Path) -> None:
    model = HFEncoderClassifier(HFEncoderConfig(cache_dir=str(tmp_path)), num_classes=2)
    emb = model.featurize(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell sharply."])
    sim = torch.nn.functional.cosine_similarity
    assert emb.shape == (3, 384)
    assert sim(emb[0:1], emb[1:2]) > sim(emb[0:1], emb[2:3])  # real pretrained weights, not random


def test_unloadable_pretrained_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="could not be loaded offline"):
        HFEncoderClassifier(HFEncoderConfig(pretrained="/no/such/model/dir"), num_classes=2)
