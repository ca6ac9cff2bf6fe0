"""Vectorized per-sample gradients (layerwise ghost/book-keeping and whole-model vmap) against a Python loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.privacy.privacy_helpers import (
    SequenceClassifier,
    cross_entropy,
    feature_batch,
    mlp,
    reference_per_sample_grads,
    sequence_batch,
)
from trustml.errors import ConfigError
from trustml.privacy.per_sample_layerwise import check_layerwise_covers, layerwise_per_sample_gradients
from trustml.privacy.per_sample_vmap import vmap_per_sample_gradients

ENGINES = {"layerwise": layerwise_per_sample_gradients, "vmap": vmap_per_sample_gradients}

CASES = {
    "mlp": (mlp, lambda: feature_batch(6)),
    # length 5: Linear(8, 16) takes the ghost-norm path (5 * 24 < 128); length 12 materializes instead.
    "sequence-short": (SequenceClassifier, lambda: sequence_batch(6, length=5)),
    "sequence-long": (SequenceClassifier, lambda: sequence_batch(6, length=12)),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_engines_match_a_per_sample_loop(engine: str, case: str) -> None:
    torch.manual_seed(0)
    make_model, make_batch = CASES[case]
    model, batch = make_model().eval(), make_batch()
    params = dict(model.named_parameters())
    expected = reference_per_sample_grads(model, params, cross_entropy, batch)

    result = ENGINES[engine](model, params, cross_entropy, batch)

    grads = result.grads
    for name, want in expected.items():
        torch.testing.assert_close(grads.materialize()[name], want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads.squared_norms()[name], want.flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-6)
    weights = {name: torch.rand(6) for name in params}
    summed = grads.weighted_sum(weights)
    for name, want in expected.items():
        torch.testing.assert_close(summed[name], torch.tensordot(weights[name], want, dims=1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.losses, cross_entropy(model(batch["x"]), batch))
    torch.testing.assert_close(result.logits, model(batch["x"]))


def test_only_the_requested_parameters_are_differentiated() -> None:
    torch.manual_seed(0)
    model, batch = mlp().eval(), feature_batch(4)
    head = {name: p for name, p in model.named_parameters() if name.startswith("3.")}
    for engine in ENGINES.values():
        grads = engine(model, head, cross_entropy, batch).grads.materialize()
        assert set(grads) == {"3.weight", "3.bias"}
        for name, want in reference_per_sample_grads(model, head, cross_entropy, batch).items():
            torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6)


class _Wrapped(nn.Module):
    """A Hugging Face sequence classifier taking the batch's ``x`` dict and returning logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return self.model(**x).logits


def _tiny_bert(everything: bool = False) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    model = _Wrapped(BertForSequenceClassification(config)).eval()
    for name, p in model.named_parameters():  # fine-tune the last layer and the head, or all of it
        p.requires_grad_(everything or "layer.1." in name or "classifier" in name or "pooler" in name)
    return model


def _token_batch(size: int = 4, length: int = 6) -> dict[str, object]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 4:] = 0
    return {
        "x": {"input_ids": torch.randint(1, 50, (size, length), generator=generator), "attention_mask": mask},
        "y": torch.randint(0, 3, (size,), generator=generator),
        "index": torch.arange(size),
    }


@pytest.mark.parametrize("everything", [False, True], ids=["last-layer", "all-weights"])
def test_layerwise_handles_a_hugging_face_encoder_with_padding(everything: bool) -> None:
    # all weights include BERT's position embeddings, called once on position ids [1, T] for the whole batch
    torch.manual_seed(0)
    model, batch = _tiny_bert(everything), _token_batch()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    expected = reference_per_sample_grads(model, params, cross_entropy, batch)
    grads = layerwise_per_sample_gradients(model, params, cross_entropy, batch).grads
    for name, want in expected.items():
        torch.testing.assert_close(grads.materialize()[name], want, rtol=1e-4, atol=1e-6)


def test_vmap_on_data_dependent_forward_names_the_fix() -> None:
    model, batch = _tiny_bert(), _token_batch()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ConfigError, match="per_sample_gradients=layerwise"):
        vmap_per_sample_gradients(model, params, cross_entropy, batch)


class _TiedLanguageHead(nn.Module):
    """Output layer reusing the embedding matrix through ``F.linear`` (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.embed(x).mean(1), self.embed.weight)


def test_tied_weights_are_refused_by_layerwise_and_handled_by_vmap() -> None:
    torch.manual_seed(0)
    model = _TiedLanguageHead()
    batch = {"x": torch.randint(0, 10, (5, 3)), "y": torch.randint(0, 10, (5,)), "index": torch.arange(5)}
    params = dict(model.named_parameters())
    with pytest.raises(ConfigError, match="per_sample_gradients=vmap"):
        check_layerwise_covers(model, params, cross_entropy, batch)
    grads = vmap_per_sample_gradients(model, params, cross_entropy, batch).grads.materialize()
    want = reference_per_sample_grads(model, params, cross_entropy, batch)
    torch.testing.assert_close(grads["embed.weight"], want["embed.weight"], rtol=1e-4, atol=1e-6)


def test_layer_returning_a_tuple_is_refused_by_layerwise() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(5, 4, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    model = Recurrent()
    batch = {"x": torch.randn(3, 2, 5), "y": torch.tensor([0, 1, 2]), "index": torch.arange(3)}
    with pytest.raises(ConfigError, match="returns tuple"):
        layerwise_per_sample_gradients(model, dict(model.named_parameters()), cross_entropy, batch)
