"""Vectorized per-sample gradients (layerwise ghost/book-keeping and whole-model vmap) against a Python loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.privacy.privacy_helpers import (
    SequenceClassifier,
    SharedInputBlock,
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
    # query/key/value share one input (one Gram matrix for the three, ghost path: 3 * 16 < 64); LayerNorms over
    # one and over two dimensions, with and without bias (closed-form per-sample gradients)
    "shared-input-layernorm": (lambda: SharedInputBlock(dim=16, length=3), lambda: sequence_batch(6, length=3)),
    # a layer's output changed in place after it returns (ReLU(inplace=True)): its output gradient is the one of
    # the value the layer returned, not of the rectified tensor
    "inplace-after-linear": (
        lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)),
        lambda: feature_batch(6),
    ),
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
    totals = {name: torch.ones_like(p) for name, p in params.items()}
    grads.add_weighted_sum_(weights, totals)  # in place, onto what the buffers hold
    for name, want in expected.items():
        torch.testing.assert_close(summed[name], torch.tensordot(weights[name], want, dims=1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(totals[name], 1 + summed[name], rtol=1e-4, atol=1e-6)
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


class _SequenceFirst(nn.Module):
    """Token features ``[B, T, 5]`` turned sequence-first ``[T, B, 5]`` before a ``Linear``, then mean-pooled.

    Its per-sample gradients are well defined, but the layerwise engine would read row ``t`` of ``proj``'s
    output as sample ``t``: with ``T == B`` the shapes look batch-first and the rows are time steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.proj(x.transpose(0, 1))).mean(0))


def _sequence_first_batch(size: int, length: int) -> dict[str, object]:
    generator = torch.Generator().manual_seed(2)
    return {
        "x": torch.randn(size, length, 5, generator=generator),
        "y": torch.randint(0, 3, (size,), generator=generator),
        "index": torch.arange(size),
    }


def test_sequence_first_layer_with_t_equal_to_b_is_refused_though_the_sums_match() -> None:
    torch.manual_seed(0)
    model, batch = _SequenceFirst().eval(), _sequence_first_batch(size=4, length=4)
    params = dict(model.named_parameters())
    result = layerwise_per_sample_gradients(model, params, cross_entropy, batch)
    reference = reference_per_sample_grads(model, params, cross_entropy, batch)
    # the sum over samples is right (the old check alone passed it) ...
    summed = result.grads.weighted_sum({name: torch.ones(4) for name in params})
    for name, want in reference.items():
        torch.testing.assert_close(summed[name], want.sum(0), rtol=1e-4, atol=1e-6)
    # ... but the per-sample norms, which clipping uses, are those of time steps, not of samples
    norms = result.grads.squared_norms()["proj.weight"]
    assert not torch.allclose(norms, reference["proj.weight"].flatten(1).pow(2).sum(1), rtol=1e-2)
    with pytest.raises(
        ConfigError,
        match=r"'proj.weight' \(layer 'proj'\) to the wrong samples.*sequence-first.*"
        r"batch-first.*per_sample_gradients=vmap",
    ):
        check_layerwise_covers(model, params, cross_entropy, batch)
    # the fix the message names gives the right per-sample gradients
    grads = vmap_per_sample_gradients(model, params, cross_entropy, batch).grads.materialize()
    torch.testing.assert_close(grads["proj.weight"], reference["proj.weight"], rtol=1e-4, atol=1e-6)


def test_sequence_first_layer_with_t_not_b_is_refused_by_its_shape() -> None:
    model, batch = _SequenceFirst().eval(), _sequence_first_batch(size=4, length=6)
    with pytest.raises(
        ConfigError,
        match=r"layer 'proj' \(Linear\).*shape \[6, 4, 8\].*not the batch size 4 "
        r"\(dimension 1 is.*sequence-first.*per_sample_gradients=vmap",
    ):
        layerwise_per_sample_gradients(model, dict(model.named_parameters()), cross_entropy, batch)


def test_a_layer_mixing_samples_is_refused_when_only_some_parameters_are_trained() -> None:
    # the attribution probe compares per parameter: the mixing layer is named even if the head is right
    model, batch = _SequenceFirst().eval(), _sequence_first_batch(size=3, length=3)
    params = {name: p for name, p in model.named_parameters() if name.startswith("proj.")}
    with pytest.raises(ConfigError, match=r"'proj\.(weight|bias)' \(layer 'proj'\) to the wrong samples"):
        check_layerwise_covers(model, params, cross_entropy, batch)
    check_layerwise_covers(
        model, {n: p for n, p in model.named_parameters() if n.startswith("head.")}, cross_entropy, batch
    )  # the head sees batch-first inputs: its attribution is right


def _tiny_bart() -> nn.Module:
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return _Wrapped(BartForSequenceClassification(config)).eval()


def _bart_batch(size: int, length: int) -> dict[str, object]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 50, (size, length), generator=generator)
    ids[:, -1] = 2  # BART classifies the hidden state of the last end-of-sequence token
    return {
        "x": {"input_ids": ids, "attention_mask": torch.ones(size, length, dtype=torch.long)},
        "y": torch.randint(0, 3, (size,), generator=generator),
        "index": torch.arange(size),
    }


ATTRIBUTION_CASES = {
    "mlp": (mlp, lambda: feature_batch(6)),
    "sequence": (SequenceClassifier, lambda: sequence_batch(6, length=5)),
    "bert-last-layer": (_tiny_bert, lambda: _token_batch(4, length=6)),
    "bert-all-weights": (lambda: _tiny_bert(everything=True), lambda: _token_batch(4, length=4)),  # T == B
    "bart": (_tiny_bart, lambda: _bart_batch(4, length=6)),
    # T == B: the decoder's position ids [T] must not be taken for per-sample inputs
    "bart-t-equals-b": (_tiny_bart, lambda: _bart_batch(4, length=4)),
}


@pytest.mark.parametrize("case", sorted(ATTRIBUTION_CASES))
def test_batch_first_models_pass_the_attribution_check_with_the_right_norms(case: str) -> None:
    torch.manual_seed(0)
    make_model, make_batch = ATTRIBUTION_CASES[case]
    model, batch = make_model(), make_batch()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    check_layerwise_covers(model, params, cross_entropy, batch)
    model.eval()
    norms = layerwise_per_sample_gradients(model, params, cross_entropy, batch).grads.squared_norms()
    for name, want in reference_per_sample_grads(model, params, cross_entropy, batch).items():
        torch.testing.assert_close(norms[name], want.flatten(1).pow(2).sum(1), rtol=1e-3, atol=1e-8, msg=name)


def test_the_attribution_probe_runs_a_few_samples_once_per_model() -> None:
    from trustml.privacy.engine import NoisePlan
    from trustml.privacy.optimizers import DPSGDOptimizer
    from trustml.privacy.options import DPSGDConfig
    from trustml.privacy.per_sample_layerwise import PROBE_SAMPLES

    model = mlp()
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    optimizer = DPSGDOptimizer(
        model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0), NoisePlan(1.0, expected_batch_size=10.0)
    )
    optimizer.private_step(model, cross_entropy, feature_batch(10))
    # the check: a layerwise pass and a batch pass over the 10 samples, then PROBE_SAMPLES samples alone;
    # then the step's own layerwise pass
    assert sorted(calls) == sorted([10, 10, 10] + [1] * PROBE_SAMPLES) and PROBE_SAMPLES <= 4
    calls.clear()
    optimizer.private_step(model, cross_entropy, feature_batch(10, seed=1))
    assert calls == [10]  # later steps run no check


def test_layerwise_covers_every_layer_type_of_a_fully_fine_tuned_encoder_plugin() -> None:
    # model=hf_encoder with model.freeze_encoder=false, as users fine-tune MiniLM: word, position and token-type
    # embeddings, every LayerNorm, the attention projections, the FFN and the head are all trainable
    from trustml.models.hf_encoder import HFEncoderClassifier, HFEncoderConfig

    torch.manual_seed(0)
    bert = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    bert |= {"intermediate_size": 32, "vocab_size": 30522, "max_position_embeddings": 32}
    config = HFEncoderConfig(random_init_config=bert, freeze_encoder=False, max_length=16, dropout=0.0)
    model = HFEncoderClassifier(config, num_classes=3).eval()
    texts = ["my pin code is 4 7 1 9", "play a song", "what is the weather in paris today", "hi"]
    batch = {"x": model.featurize(texts), "y": torch.tensor([0, 1, 2, 1]), "index": torch.arange(4)}
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(params) == len(list(model.parameters()))
    owners = {type(m).__name__ for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    assert owners == {"Embedding", "LayerNorm", "Linear"}
    expected = reference_per_sample_grads(model, params, cross_entropy, batch)
    result = layerwise_per_sample_gradients(model, params, cross_entropy, batch)
    grads = result.grads.materialize()
    for name, want in expected.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-6)
    norms = result.grads.squared_norms()  # ghost norms (Linear, Embedding) equal the materialized ones
    for name, want in expected.items():
        torch.testing.assert_close(norms[name], want.flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-8)
