"""The linearized model of method=lqf: JVP output vs an explicit Jacobian, first-order behaviour, layer choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import functional_call

from trustml.errors import ConfigError
from trustml.methods.lqf import LinearizedNetwork, select_layers, swap_activations
from trustml.models.mlp import MLP, MLPConfig


def tiny_mlp(seed: int = 0, activation: str = "tanh") -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(hidden_sizes=[5, 6], dropout=0.0, activation=activation), num_classes=3, input_dim=4).double()


def linearized(net: nn.Module, linearize: str = "all", k: int = 1) -> LinearizedNetwork:
    layers = select_layers(net, linearize, k)
    names = [f"{layer}.{p}" for layer in layers for p, _ in net.get_submodule(layer).named_parameters(recurse=False)]
    return LinearizedNetwork(net, names)


def random_delta(lin: LinearizedNetwork, scale: float = 1.0, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in lin.delta:
            d.copy_(scale * torch.randn(d.shape, generator=g, dtype=d.dtype))


@pytest.mark.parametrize(("linearize", "k"), [("all", 1), ("head", 1), ("last_k_layers", 2)])
def test_jvp_output_equals_explicit_jacobian_times_delta(linearize: str, k: int) -> None:
    net = tiny_mlp()
    lin = linearized(net, linearize, k)
    random_delta(lin)
    x = torch.randn(7, 4, dtype=torch.float64)
    w0 = lin.base_parameters()

    def f(*ws: torch.Tensor) -> torch.Tensor:
        return functional_call(net, dict(zip(lin.names, ws, strict=True)), (x,))

    jac = jacobian(f, w0)  # one [7, 3, *param.shape] block per linearized parameter
    explicit = f(*w0) + sum(torch.einsum("bc...,...->bc", j, d.detach()) for j, d in zip(jac, lin.delta, strict=True))
    torch.testing.assert_close(lin(x), explicit, rtol=1e-10, atol=1e-10)


def test_f_lin_equals_f_at_w0_and_its_change_matches_a_finite_difference() -> None:
    net = tiny_mlp(activation="relu")
    swap_activations(net, "body.0", 0.1)
    lin = linearized(net)
    x = torch.randn(9, 4, dtype=torch.float64)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=0)  # delta = 0 at the start
    random_delta(lin, seed=3)
    eps = 1e-5

    def shifted(sign: float) -> torch.Tensor:
        pairs = zip(lin.names, lin.base_parameters(), lin.delta, strict=True)
        ws = {n: w + sign * eps * d.detach() for n, w, d in pairs}
        return functional_call(net, ws, (x,))

    finite = (shifted(1.0) - shifted(-1.0)) / (2 * eps)  # central difference: error O(eps^2)
    torch.testing.assert_close(lin(x) - net(x), finite, rtol=1e-6, atol=1e-8)
    assert (lin(x) - net(x)).abs().max() > 1e-3  # the delta does change the output


def test_linearized_model_is_linear_in_delta_so_federated_averages_are_exact() -> None:
    lin = linearized(tiny_mlp())
    x = torch.randn(5, 4, dtype=torch.float64)
    deltas, outputs = [], []
    for seed in range(3):
        random_delta(lin, seed=seed)
        deltas.append([d.detach().clone() for d in lin.delta])
        outputs.append(lin(x))
    with torch.no_grad():
        for i, d in enumerate(lin.delta):
            d.copy_(sum(ds[i] for ds in deltas) / 3)
    torch.testing.assert_close(lin(x), sum(outputs) / 3)


def test_only_delta_trains_and_the_network_stays_at_w0_in_eval_mode() -> None:
    net = tiny_mlp()
    lin = linearized(net, "head")
    lin.train()
    assert not net.training
    trainable = [n for n, p in lin.named_parameters() if p.requires_grad]
    assert trainable == ["delta.0", "delta.1"]
    assert lin.names == ["head.weight", "head.bias"]


def test_layer_selection_and_activation_swap() -> None:
    net = tiny_mlp(activation="relu")
    assert select_layers(net, "all") == ["body.0", "body.4", "head"]
    assert select_layers(net, "last_k_layers", 2) == ["body.4", "head"]
    assert select_layers(net, "head") == ["head"]
    swapped = swap_activations(net, "body.4", 0.2)
    assert swapped == ["body.6 (ReLU)"]  # only downstream of the first linearized layer
    assert isinstance(net.body[2], nn.ReLU) and isinstance(net.body[6], nn.LeakyReLU)
    assert net.body[6].negative_slope == 0.2
    with pytest.raises(ConfigError, match=r"method.linearize must be one of \('head', 'last_k_layers', 'all'\)"):
        select_layers(net, "everything")
    with pytest.raises(ConfigError, match="method.k=9 but MLP has 3 layers"):
        select_layers(net, "last_k_layers", 9)


def test_exclude_keeps_matching_layers_at_w0_and_bad_patterns_are_refused() -> None:
    torch.manual_seed(0)
    net = MLP(MLPConfig(hidden_sizes=[5], dropout=0.0, norm="layer"), num_classes=3, input_dim=4).double()
    assert select_layers(net, "all") == ["body.0", "body.1", "head"]
    assert select_layers(net, "all", exclude=["body.1"]) == ["body.0", "head"]
    assert select_layers(net, "last_k_layers", 2, exclude=["*.1"]) == ["head"]
    names = [f"{layer}.{p}" for layer in ("body.0", "head") for p in ("weight", "bias")]
    lin = LinearizedNetwork(net, names)
    random_delta(lin)
    x = torch.randn(6, 4, dtype=torch.float64)
    # the LayerNorm is frozen at w0: f_lin is the first-order expansion in the Linear layers' weights only
    w0 = lin.base_parameters()
    full = jacobian(lambda *ws: functional_call(net, dict(zip(names, ws, strict=True)), (x,)), w0)
    expected = net(x) + sum((j.flatten(2) @ d.flatten()) for j, d in zip(full, lin.delta, strict=True))
    torch.testing.assert_close(lin(x), expected)
    with pytest.raises(ConfigError, match=r"method.exclude pattern '\*Norm' matches none of the layers"):
        select_layers(net, "all", exclude=["*Norm"])
    with pytest.raises(ConfigError, match="excludes every layer method.linearize=head selects"):
        select_layers(net, "head", exclude=["head"])
