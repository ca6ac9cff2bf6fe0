"""Kronecker-factored curvature (K-FAC, Martens & Grosse 2015) for ``nn.Linear`` layers, as LQF uses it.

For a linear layer ``s = W a + b`` (``W`` of shape ``[out, in]``) write ``a~ = [a; 1]`` and ``W~ = [W b]``. The
Fisher / Gauss-Newton block of the layer is ``F = E_i[ sum_c (a~_i a~_i^T) (x) (g_ic g_ic^T) ]`` where
``g_ic = J_s(x_i)^T v_ic`` is the output gradient of the loss along the c-th square-root direction of the loss
Hessian in the network's output, ``H_i = sum_c v_ic v_ic^T``. K-FAC approximates it by the Kronecker product

    F ~ A (x) G,   A = (1/N) sum_i a~_i a~_i^T,   G = (1/N) sum_i sum_c g_ic g_ic^T,

so that ``F^-1 vec(grad_W~) = vec(G^-1 grad_W~ A^-1)`` (column-major ``vec``). Two ways to compute ``G``
(``fisher``):

``exact`` (default): the *true* Fisher / Gauss-Newton factor, the expectation over the model's output distribution
computed exactly with one backward pass per output direction (``C`` backward passes per update, ``C`` = classes):

- ``loss=mse`` (``l = ||f - t||^2``): ``H = 2 I``, ``v_ic = sqrt(2) e_c``; for a linear model this is the exact,
  constant Hessian, so the factors can be computed once;
- ``loss=ce``: ``H = diag(p) - p p^T = sum_c p_c (e_c - p)(e_c - p)^T``, ``v_ic = sqrt(p_ic)(e_c - p_i)``.

``sampled``: the Monte-Carlo Fisher of Martens & Grosse (their section 5), *one* backward pass per update: for each
input draw a target from the model's predictive distribution and take the loss gradient in the logits at that
target, ``v_i = d l(f_i, t~_i) / d f_i``, so that ``E[v_i v_i^T] = H_i`` and ``G~ = (1/N) sum_i g_i g_i^T`` with
``g_i = J_s(x_i)^T v_i`` is an unbiased estimate of ``G``:

- ``loss=mse``: the likelihood of ``l = ||f - t||^2`` is ``t ~ N(f, I/2)``, so ``v_i = 2 (f_i - t~_i) = sqrt(2) z_i``
  with ``z_i ~ N(0, I)``;
- ``loss=ce``: ``y~_i ~ Categorical(p_i)`` and ``v_i = p_i - e_{y~_i}``.

The estimate has rank at most ``N`` in ``G``'s ``out`` dimensions: use it with enough inputs per update (the
damping below keeps the inverse defined either way).

Damping is Martens & Grosse's factored Tikhonov damping (their section 6.3): with ``lambda`` the damping and
``pi = sqrt( (tr(A) / dim A) / (tr(G) / dim G) )``,

    (F + lambda I)^-1 ~ (A + pi sqrt(lambda) I)^-1 (x) (G + sqrt(lambda) / pi I)^-1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trustml.errors import ConfigError

#: Layer types K-FAC covers.
COVERED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear,)
#: How ``G`` is computed (module doc).
FISHER_KINDS = ("exact", "sampled")


@dataclass
class KFACFactors:
    """The Kronecker factors of one layer and their damped inverses."""

    A: Tensor  # [in (+1), in (+1)] input second moment, bias column included when the layer has a bias
    G: Tensor  # [out, out] output-gradient second moment
    A_inv: Tensor
    G_inv: Tensor


def input_factor(inputs: Tensor, bias: bool) -> Tensor:
    """``A = (1/N) sum_i a~_i a~_i^T`` from ``inputs [N, in]``; ``a~ = [a; 1]`` when ``bias``."""
    n = inputs.shape[0]
    a = torch.cat([inputs, inputs.new_ones(n, 1)], dim=1) if bias else inputs
    return a.T @ a / n


def kronecker_factors(inputs: Tensor, output_grads: Tensor, bias: bool) -> tuple[Tensor, Tensor]:
    """``A`` (:func:`input_factor`) and ``G = (1/N) sum_i sum_c g_ic g_ic^T`` from ``output_grads [N, C, out]``
    (``C`` output directions per sample)."""
    G = torch.einsum("nco,ncp->op", output_grads, output_grads) / inputs.shape[0]
    return input_factor(inputs, bias), G


def damped_inverses(A: Tensor, G: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """``((A + pi sqrt(damping) I)^-1, (G + sqrt(damping)/pi I)^-1)``, the factored Tikhonov damping (module doc)."""
    if damping <= 0:
        raise ConfigError(f"method.kfac_damping must be > 0 (the factors may be singular), got {damping}")
    trace_a = float(torch.trace(A)) / A.shape[0]
    trace_g = float(torch.trace(G)) / G.shape[0]
    pi = math.sqrt(trace_a / trace_g) if trace_a > 0 and trace_g > 0 else 1.0
    root = math.sqrt(damping)
    eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return torch.linalg.inv(A + pi * root * eye_a), torch.linalg.inv(G + root / pi * eye_g)


def precondition_linear(grad_w: Tensor, grad_b: Tensor | None, factors: KFACFactors) -> tuple[Tensor, Tensor | None]:
    """``G^-1 [grad_W grad_b] A^-1``, split back into the weight and bias parts."""
    grad = grad_w if grad_b is None else torch.cat([grad_w, grad_b.unsqueeze(1)], dim=1)
    pre = factors.G_inv @ grad @ factors.A_inv
    if grad_b is None:
        return pre, None
    return pre[:, :-1].contiguous(), pre[:, -1].contiguous()


def output_hessian_roots(logits: Tensor, loss: str) -> Tensor:
    """``V [N, C, C]`` with ``H_i = sum_c V[i, c] V[i, c]^T`` the Hessian of the loss in the logits (module doc)."""
    n, c = logits.shape
    eye = torch.eye(c, dtype=logits.dtype, device=logits.device)
    if loss == "mse":
        return math.sqrt(2.0) * eye.expand(n, c, c)
    p = torch.softmax(logits.detach(), dim=1)
    return p.sqrt().unsqueeze(2) * (eye.unsqueeze(0) - p.unsqueeze(1))


def sampled_output_gradients(logits: Tensor, loss: str, generator: torch.Generator | None = None) -> Tensor:
    """``V [N, C]``: one draw per sample of the loss gradient in the logits at a target sampled from the model,
    with ``E[V[i] V[i]^T] = H_i`` (module doc): ``sqrt(2) z`` for ``mse``, ``p - onehot(y~), y~ ~ p`` for ``ce``."""
    n, c = logits.shape
    if loss == "mse":
        z = torch.randn(n, c, generator=generator, dtype=logits.dtype)
        return math.sqrt(2.0) * z.to(logits.device)
    p = torch.softmax(logits.detach(), dim=1)
    y = torch.multinomial(p.cpu().to(torch.float64), 1, generator=generator).squeeze(1).to(logits.device)
    return p - torch.nn.functional.one_hot(y, c).to(p.dtype)


def check_covered(layers: dict[str, nn.Module]) -> None:
    """Refuse a layer K-FAC does not cover, naming it and the choices."""
    for name, layer in layers.items():
        if not isinstance(layer, COVERED_LAYERS):
            raise ConfigError(
                f"method.precondition=kfac covers {[t.__name__ for t in COVERED_LAYERS]} layers only, but the "
                f"linearized layer '{name}' is a {type(layer).__name__}; use method.precondition=none, or linearize "
                "only Linear layers (method.linearize=head, last_k_layers with a k that stops before it, or "
                f"method.exclude=['{name}'] to keep it at w0)"
            )


class KFAC:
    """K-FAC factors of the given ``nn.Linear`` layers of ``network`` around its current weights.

    :meth:`update` runs ``network`` on ``x`` (in whatever mode it is in) and computes, for every layer, ``A``
    from its inputs and ``G`` from the output gradients along the loss-Hessian roots (``fisher="exact"``, one
    backward per class) or along one sampled loss gradient per input (``fisher="sampled"``, one backward; drawn
    from a generator seeded with ``seed``) of ``logits_for_hessian`` (for ``loss=ce``: the logits whose softmax
    gives ``p``; default: the network's own). :meth:`precondition` maps each layer's weight/bias gradients to
    ``G^-1 grad A^-1``.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str],
        loss: str,
        damping: float,
        fisher: str = "exact",
        seed: int = 0,
    ) -> None:
        modules = dict(network.named_modules())
        self.layers = {name: modules[name] for name in layers}
        check_covered(self.layers)
        if loss not in ("mse", "ce"):
            raise ConfigError(f"K-FAC: loss must be 'mse' or 'ce', got '{loss}'")
        if damping <= 0:
            raise ConfigError(f"method.kfac_damping must be > 0, got {damping}")
        if fisher not in FISHER_KINDS:
            raise ConfigError(f"method.kfac_fisher must be one of {FISHER_KINDS}, got '{fisher}'")
        self.network, self.loss, self.damping, self.fisher = network, loss, damping, fisher
        self.generator = torch.Generator().manual_seed(seed)
        self.factors: dict[str, KFACFactors] = {}
        self.updates = 0

    def update(self, x: Tensor, logits_for_hessian: Tensor | None = None) -> None:
        """Recompute every layer's factors and damped inverses from the batch ``x``."""
        inputs: dict[str, Tensor] = {}
        probes: dict[str, Tensor] = {}

        def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
            def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
                inputs[name] = args[0].detach()
                probe = torch.zeros_like(output, requires_grad=True)
                probes[name] = probe
                return output + probe  # d loss / d probe = d loss / d output, whatever requires grad upstream

            return record

        handles = [layer.register_forward_hook(hook(name)) for name, layer in self.layers.items()]
        try:
            with torch.enable_grad():
                logits = self.network(x)
        finally:
            for handle in handles:
                handle.remove()
        hessian_logits = logits if logits_for_hessian is None else logits_for_hessian
        if self.fisher == "sampled":
            roots = sampled_output_gradients(hessian_logits, self.loss, self.generator).unsqueeze(1)  # [N, 1, C]
        else:
            roots = output_hessian_roots(hessian_logits, self.loss)  # [N, C, C]
        names = list(self.layers)
        # G accumulated one output direction at a time: memory of one direction's gradients, not C of them
        moments: dict[str, Tensor] = {}
        for c in range(roots.shape[1]):
            outs = torch.autograd.grad(logits, [probes[n] for n in names], grad_outputs=roots[:, c], retain_graph=True)
            for name, g in zip(names, outs, strict=True):
                rows = g.detach().reshape(-1, g.shape[-1])  # every position of a sequence is a row
                moments[name] = rows.T @ rows + moments[name] if name in moments else rows.T @ rows
        for name in names:
            layer = self.layers[name]
            a = inputs[name].reshape(-1, inputs[name].shape[-1])
            A, G = input_factor(a, bias=layer.bias is not None), moments[name] / a.shape[0]
            A_inv, G_inv = damped_inverses(A, G, self.damping)
            self.factors[name] = KFACFactors(A, G, A_inv, G_inv)
        self.updates += 1

    def precondition(self, name: str, grad_w: Tensor, grad_b: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``G^-1 [grad_W grad_b] A^-1`` of layer ``name`` (call :meth:`update` first)."""
        return precondition_linear(grad_w, grad_b, self.factors[name])

    def memory_bytes(self) -> int:
        """Bytes held by the factors and their inverses."""
        return sum(t.numel() * t.element_size() for f in self.factors.values() for t in (f.A, f.G, f.A_inv, f.G_inv))


def precondition_before_step(optimizer: torch.optim.Optimizer, precondition: Callable[[], None]) -> None:
    """Make ``optimizer.step(closure)`` call ``precondition()`` after the gradients exist and before the update.

    A step pre-hook is not enough: Lightning passes a closure that computes the gradients *inside* ``step``, after
    the pre-hooks ran. The patched ``step`` runs the closure first, then ``precondition``, then the plain update.
    """
    plain_step = optimizer.step

    def step(closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        precondition()
        plain_step()
        return loss

    optimizer.step = step  # type: ignore[method-assign]
