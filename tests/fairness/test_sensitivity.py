"""Accumulated prediction sensitivity: the batched computation against a per-sample autograd loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustml.errors import ConfigError, DataError
from trustml.fairness.sensitivity import (
    EmbeddingInputClassifier,
    ProtectedStatusModel,
    accumulated_prediction_sensitivity,
    pooled_input_embeddings,
    token_prediction_sensitivity,
    train_protected_model,
)
from trustml.models.hf_encoder import mean_pool


class TinyTokenClassifier(nn.Module):
    """``head(mean_pool(tanh(W x)))`` over token embeddings [B, T, D] with a mask."""

    def __init__(self, dim: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(dim, 7), nn.Linear(7, classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(mean_pool(torch.tanh(self.proj(x)), mask))


def loop_reference(task, protected, inputs, mask, weights: str) -> torch.Tensor:
    """PS(x) = w^T |J| v, one sample at a time with full Jacobians (torch.autograd.functional.jacobian)."""
    values = []
    for i in range(len(inputs)):
        x = inputs[i : i + 1]
        m = None if mask is None else mask[i : i + 1]

        def call(model, z, m=m):
            return (model(z) if m is None else model(z, m)).softmax(-1)[0]

        jac_f = torch.autograd.functional.jacobian(lambda z: call(task, z), x).reshape(-1, x.numel())  # [C, n]
        jac_g = torch.autograd.functional.jacobian(lambda z: call(protected, z), x).reshape(-1, x.numel())
        u = jac_g.abs().sum(0)
        if m is not None:
            keep = m[0].unsqueeze(-1).expand(x.shape[1:]).reshape(-1).to(x.dtype)
            u, jac_f = u * keep, jac_f * keep
        v = u / u.sum()
        probs = call(task, x)
        w = (
            torch.full_like(probs, 1 / len(probs))
            if weights == "uniform"
            else nn.functional.one_hot(probs.argmax(), len(probs)).to(probs.dtype)
        )
        values.append(w @ jac_f.abs() @ v)
    return torch.stack(values)


@pytest.mark.parametrize("weights", ["uniform", "predicted"])
def test_batched_aps_equals_per_sample_loop_on_token_embeddings(weights: str) -> None:
    torch.manual_seed(0)
    inputs = torch.randn(9, 6, 5, dtype=torch.float64)
    mask = torch.ones(9, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[5, 2:] = 0
    task = TinyTokenClassifier().double()
    protected = ProtectedStatusModel(5, ["f", "m", "x"]).double()  # three groups: magnitudes summed
    result = accumulated_prediction_sensitivity(task, protected, inputs, mask, class_weights=weights, batch_size=4)
    expected = loop_reference(task, protected, inputs, mask, weights)
    assert torch.allclose(result.per_sample.double(), expected, rtol=1e-8, atol=1e-12)
    assert result.aps == pytest.approx(expected.mean().item()) and result.n == 9


def test_batched_aps_equals_loop_on_features_and_tiny_bert() -> None:
    torch.manual_seed(1)
    feats = torch.randn(7, 4, dtype=torch.float64)
    task = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    protected = ProtectedStatusModel(4, ["a", "b"]).double()
    result = accumulated_prediction_sensitivity(task, protected, feats, batch_size=3)
    assert torch.allclose(result.per_sample.double(), loop_reference(task, protected, feats, None, "uniform"))

    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=100,
            max_position_embeddings=16,
        ),
        add_pooling_layer=False,
    )
    head = nn.Linear(16, 3)

    class BertClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert, self.head = bert, head

        def forward(self, emb, mask):
            return self.head(mean_pool(self.bert(inputs_embeds=emb, attention_mask=mask).last_hidden_state, mask))

    task_bert = BertClassifier().train()  # dropout on: APS must switch to eval mode (and restore)
    emb = bert.embeddings.word_embeddings(torch.randint(0, 100, (5, 6))).detach()
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[2, 3:] = 0
    protected = ProtectedStatusModel(16, ["a", "b"])
    result = accumulated_prediction_sensitivity(task_bert, protected, emb, mask, batch_size=5)
    assert task_bert.training
    task_bert.eval()
    expected = loop_reference(task_bert, protected, emb, mask, "uniform")
    assert torch.allclose(result.per_sample, expected, rtol=1e-4, atol=1e-7)


def test_features_the_protected_model_ignores_get_no_weight() -> None:
    task = nn.Linear(2, 2)
    protected = ProtectedStatusModel(2, ["a", "b"])
    with torch.no_grad():
        task.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))  # the task uses feature 1 only
        protected.linear.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # group lives in feature 0
    assert accumulated_prediction_sensitivity(task, protected, torch.randn(4, 2)).aps == 0.0
    with torch.no_grad():
        task.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # now the task uses the protected feature
    assert accumulated_prediction_sensitivity(task, protected, torch.randn(4, 2)).aps > 0.0


def test_train_protected_model_learns_the_group_and_rejects_one_group() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 5, 3)
    labels = ["female" if v > 0 else "male" for v in x[:, :, 1].mean(1)]
    model, accuracy = train_protected_model(x, labels, seed=0)
    assert model.groups == ["female", "male"] and accuracy > 0.9
    assert model(x, torch.ones(200, 5)).shape == (200, 2)
    with pytest.raises(DataError, match="single group"):
        train_protected_model(x, ["male"] * 200)
    with pytest.raises(DataError, match="one protected label per input"):
        train_protected_model(x, ["male", "female"])


@pytest.fixture(scope="module")
def tiny_encoder_classifier():
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    torch.manual_seed(0)
    config = HFEncoderConfig(
        random_init_config={
            "model_type": "bert",
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 30522,
            "max_position_embeddings": 64,
        },
        freeze_encoder=False,
        cache_embeddings=False,
        head_hidden_sizes=[8],
        max_length=32,
    )
    return HFEncoderClassifier(config, num_classes=3).double().train()  # dropout on: APS must use eval mode


TEXTS = ["she is a nurse", "he fixed the old car yesterday", "they left", "my sister plays chess with him", "ok"]


@pytest.mark.parametrize("weights", ["uniform", "predicted"])
def test_token_aps_equals_per_text_autograd_loop(tiny_encoder_classifier, weights: str) -> None:
    """Batched APS on padded token ids == a per-text loop of full Jacobians on each unpadded text's embeddings."""
    model = tiny_encoder_classifier
    inputs = model.featurize(TEXTS)
    assert inputs["attention_mask"].sum(1).min() < inputs["attention_mask"].shape[1]  # some texts are padded
    protected = ProtectedStatusModel(16, ["f", "m"]).double()
    with torch.no_grad():
        protected.linear.weight.copy_(torch.randn(2, 16, dtype=torch.float64))
    result = token_prediction_sensitivity(model, protected, inputs, class_weights=weights, batch_size=2)
    assert model.training  # restored

    model.eval()
    wrapper = EmbeddingInputClassifier(model)
    table = model.encoder_module.get_input_embeddings()
    expected = []
    for i in range(len(TEXTS)):
        n = int(inputs["attention_mask"][i].sum())
        ids = inputs["input_ids"][i : i + 1, :n]
        with torch.no_grad():
            # the wrapper on the looked-up embeddings is the classifier itself
            emb = table(ids)
            full = model({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            assert torch.allclose(wrapper(emb, torch.ones_like(ids)), full)
        expected.append(loop_reference(wrapper, protected, emb, torch.ones_like(ids), weights))
    model.train()
    expected = torch.cat(expected)
    assert torch.allclose(result.per_sample.double(), expected, rtol=1e-7, atol=1e-12)
    assert result.n == len(TEXTS) and result.aps == pytest.approx(expected.mean().item())
    assert (expected > 0).all()


def test_pooled_input_embeddings_are_what_the_protected_model_reads(tiny_encoder_classifier) -> None:
    model = tiny_encoder_classifier
    inputs = model.featurize(TEXTS)
    pooled = pooled_input_embeddings(model, inputs, batch_size=2)
    table = model.encoder_module.get_input_embeddings()
    for i, text in enumerate(TEXTS):
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        assert torch.allclose(pooled[i], table(ids)[0].mean(0).detach())
    labels = ["f", "m", "none", "f", "m"]
    protected, accuracy = train_protected_model(pooled, labels)
    assert protected.groups == ["f", "m", "none"] and 0 <= accuracy <= 1


def test_token_aps_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ConfigError, match="model=hf_encoder classifier.*encoder_module"):
        EmbeddingInputClassifier(nn.Linear(2, 2))
    with pytest.raises(DataError, match="input_ids and attention_mask"):
        pooled_input_embeddings(_WithEncoder(), {"input_ids": torch.ones(2, 3, dtype=torch.long)})


class _WithEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_module, self.body, self.head = nn.Identity(), nn.Identity(), nn.Identity()
