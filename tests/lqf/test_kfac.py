"""K-FAC factors against exact per-sample computations, and the preconditioned gradient against a dense solve."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustml.errors import ConfigError
from trustml.optim.kfac import KFAC, damped_inverses, output_hessian_roots, precondition_linear


def toy_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def per_sample_factors(net: nn.Sequential, layer: int, x: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A and G of ``net[layer]`` by a loop over samples and output directions (no batching, no hooks)."""
    n = x.shape[0]
    A = torch.zeros(net[layer].in_features + 1, net[layer].in_features + 1, dtype=x.dtype)
    G = torch.zeros(net[layer].out_features, net[layer].out_features, dtype=x.dtype)
    for i in range(n):
        h = x[i : i + 1]
        for m in net[:layer]:
            h = m(h)
        a = torch.cat([h[0], h.new_ones(1)])
        A += torch.outer(a, a) / n
        s = net[layer](h).detach().requires_grad_(True)
        out = s
        for m in net[layer + 1 :]:
            out = m(out)
        roots = output_hessian_roots(out.detach(), loss)[0]
        for c in range(roots.shape[0]):
            (g,) = torch.autograd.grad(out[0], s, grad_outputs=roots[c], retain_graph=True)
            G += torch.outer(g[0], g[0]) / n
    return A, G


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_kfac_factors_equal_a_per_sample_loop(loss: str) -> None:
    net = toy_network()
    x = torch.randn(11, 3, dtype=torch.float64)
    kfac = KFAC(net, ["0", "2"], loss, damping=0.1)
    kfac.update(x)
    for name, layer in (("0", 0), ("2", 2)):
        A, G = per_sample_factors(net, layer, x, loss)
        torch.testing.assert_close(kfac.factors[name].A, A)
        torch.testing.assert_close(kfac.factors[name].G, G)


def test_output_hessian_roots_reconstruct_the_loss_hessian() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    p = torch.softmax(logits, 1)
    for loss, expected in (
        ("mse", 2 * torch.eye(3, dtype=torch.float64).expand(4, 3, 3)),
        ("ce", torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)),
    ):
        roots = output_hessian_roots(logits, loss)
        torch.testing.assert_close(torch.einsum("nci,ncj->nij", roots, roots), expected)


def test_on_a_single_linear_layer_with_mse_kfac_is_the_exact_fisher() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x = torch.randn(13, 3, dtype=torch.float64)
    kfac = KFAC(layer, [""], "mse", damping=0.1)
    kfac.update(x)
    # exact Gauss-Newton / Fisher of (1/N) sum ||W~ a~_i - t_i||^2 in vec(W~) (column-major): (2/N) sum J_i^T J_i
    a = torch.cat([x, torch.ones(13, 1, dtype=x.dtype)], 1)
    jac = torch.stack([torch.kron(a_i.unsqueeze(0), torch.eye(2, dtype=x.dtype)) for a_i in a])  # [N, 2, 8]
    exact = 2 * torch.einsum("nci,ncj->ij", jac, jac) / 13
    f = kfac.factors[""]
    torch.testing.assert_close(torch.kron(f.A, f.G), exact)


def test_preconditioned_gradient_equals_the_dense_damped_kronecker_solve() -> None:
    net = toy_network(1)
    x = torch.randn(17, 3, dtype=torch.float64)
    damping = 0.05
    kfac = KFAC(net, ["2"], "ce", damping=damping)
    kfac.update(x)
    f = kfac.factors["2"]
    grad_w, grad_b = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    pw, pb = precondition_linear(grad_w, grad_b, f)
    pi = math.sqrt((torch.trace(f.A) / 5) / (torch.trace(f.G) / 2))
    dense = torch.kron(
        f.A + pi * math.sqrt(damping) * torch.eye(5, dtype=x.dtype),
        f.G + math.sqrt(damping) / pi * torch.eye(2, dtype=x.dtype),
    )
    grad = torch.cat([grad_w, grad_b.unsqueeze(1)], 1)
    solved = torch.linalg.solve(dense, grad.T.reshape(-1)).reshape(5, 2).T  # column-major vec and back
    torch.testing.assert_close(torch.cat([pw, pb.unsqueeze(1)], 1), solved)


def test_damped_inverses_refuse_non_positive_damping() -> None:
    with pytest.raises(ConfigError, match="kfac_damping must be > 0"):
        damped_inverses(torch.eye(2), torch.eye(2), 0.0)


def test_kfac_refuses_a_layer_it_does_not_cover_naming_it_and_the_choices() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"linearized layer '1' is a LayerNorm; use method.precondition=none"):
        KFAC(net, ["0", "1", "2"], "mse", damping=0.1)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_sampled_fisher_agrees_with_the_exact_expectation(loss: str) -> None:
    """The one-backward sampled ``G`` is unbiased: averaged over many draws it equals the exact ``G``.

    11 inputs, each repeated 4,000 times in one batch: the sampled ``G`` averages 4,000 target draws per input, while
    ``A`` (no sampling) is the same. The tolerance (4 % relative Frobenius error) is below the error of the likely
    mistakes, which the test also measures: a CE gradient without the ``- p`` term (``E[e_y e_y^T] = diag(p)``) or an
    MSE draw without the ``sqrt(2)`` (half the Fisher).
    """
    net = toy_network(2)
    x = torch.randn(11, 3, dtype=torch.float64)
    exact = KFAC(net, ["0", "2"], loss, damping=0.1)
    exact.update(x)
    sampled = KFAC(net, ["0", "2"], loss, damping=0.1, fisher="sampled", seed=0)
    sampled.update(x.repeat(4000, 1))
    p = torch.softmax(net(x), 1).detach()
    for name in ("0", "2"):
        G, G_hat = exact.factors[name].G, sampled.factors[name].G
        torch.testing.assert_close(sampled.factors[name].A, exact.factors[name].A)
        error = float(torch.linalg.norm(G_hat - G) / torch.linalg.norm(G))
        assert error < 0.04, (name, error)
        # what the likely mistakes would give, computed exactly with the hook code: they are far outside the tolerance
        wrong_roots = p.sqrt().unsqueeze(2) * torch.eye(2, dtype=x.dtype) if loss == "ce" else None
        wrong = KFAC(net, ["0", "2"], loss, damping=0.1)
        if wrong_roots is None:
            wrong.update(x)
            wrong_G = wrong.factors[name].G / 2  # z without sqrt(2)
        else:
            from unittest.mock import patch

            with patch("trustml.optim.kfac.output_hessian_roots", return_value=wrong_roots):
                wrong.update(x)
            wrong_G = wrong.factors[name].G
        assert float(torch.linalg.norm(wrong_G - G) / torch.linalg.norm(G)) > 0.15, name


def test_sampled_fisher_runs_one_backward_per_update_and_depends_on_the_seed() -> None:
    net = toy_network(3)
    x = torch.randn(64, 3, dtype=torch.float64)
    calls: list[int] = []
    original = torch.autograd.grad

    def counting_grad(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    from unittest.mock import patch

    factors = []
    for seed in (0, 0, 1):
        kfac = KFAC(net, ["2"], "ce", damping=0.1, fisher="sampled", seed=seed)
        calls.clear()
        with patch("torch.autograd.grad", counting_grad):
            kfac.update(x)
        assert len(calls) == 1
        factors.append(kfac.factors["2"].G)
    torch.testing.assert_close(factors[0], factors[1])
    assert not torch.allclose(factors[0], factors[2])
    exact = KFAC(net, ["2"], "ce", damping=0.1)
    calls.clear()
    with patch("torch.autograd.grad", counting_grad):
        exact.update(x)
    assert len(calls) == 2  # one per class


def test_unknown_fisher_kind_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"kfac_fisher must be one of \('exact', 'sampled'\), got 'mc'"):
        KFAC(toy_network(), ["2"], "mse", damping=0.1, fisher="mc")
