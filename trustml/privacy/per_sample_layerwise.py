"""Per-sample gradients layer by layer, without materializing them for linear and embedding layers.

Forward hooks record, for every module that directly owns a trainable parameter, its inputs ``a`` and its
output. One ``autograd.grad`` of the summed per-sample losses gives each output's gradient ``g`` (row ``i``
is ``d loss_i / d out_i``, since samples do not interact). A parameter's per-sample gradient is then local
to its layer. For ``Linear`` (inputs ``a_i`` and output gradients ``g_i`` of ``T`` positions)
``grad W_i = g_i^T a_i``, so

* ``||grad W_i||^2 = <a_i a_i^T, g_i g_i^T>`` (the *ghost norm*, Goodfellow 2015; Li et al. 2022), which
  costs ``O(T^2 (d_in + d_out))`` instead of ``O(T d_in d_out)`` when ``T`` is short, and
* ``sum_i w_i grad W_i = (w * g)^T a`` is one matrix product (*book-keeping*, Bu et al., ICML 2023),

so DP-SGD costs about one ordinary forward and backward. ``Embedding`` works the same way with token
identities instead of ``a_i a_i^T``. Any other layer (LayerNorm, convolutions, custom modules) gets its
per-sample gradients materialized as the vector-Jacobian product ``vmap(grad(<layer(a_i), g_i>))`` with
``torch.func``. The model's own forward runs unchanged, so models with data-dependent control flow (Hugging
Face encoders) work, and frozen layers cost what they cost in non-private training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trustml.errors import ConfigError
from trustml.optim.base import SampleLossFn
from trustml.privacy.batching import Batch, add_sample_dim, batch_size, vmap_in_dims
from trustml.privacy.per_sample import PerSampleGradients, PerSampleResult


class _Contribution:
    """One layer call's share of a parameter's per-sample gradients, held as a ``[B, ...]`` tensor."""

    def __init__(self, per_sample: Tensor) -> None:
        self.per_sample = per_sample

    def materialize(self) -> Tensor:
        return self.per_sample

    def squared_norm(self) -> Tensor:
        return self.materialize().flatten(1).pow(2).sum(1)

    def weighted_sum(self, weights: Tensor) -> Tensor:
        return torch.tensordot(weights.to(self.per_sample.dtype), self.per_sample, dims=1)


class _LinearWeight(_Contribution):
    """``grad W_i = g_i^T a_i`` of a ``Linear`` layer, kept as activations ``a [B, T, in]`` and ``g [B, T, out]``."""

    def __init__(self, a: Tensor, g: Tensor) -> None:
        self.a, self.g = a, g

    def materialize(self) -> Tensor:
        return torch.bmm(self.g.transpose(1, 2), self.a)

    def squared_norm(self) -> Tensor:
        positions, d_in, d_out = self.a.shape[1], self.a.shape[2], self.g.shape[2]
        if positions == 1:
            return self.a.pow(2).sum((1, 2)) * self.g.pow(2).sum((1, 2))
        if positions * (d_in + d_out) < d_in * d_out:
            gram_a = torch.bmm(self.a, self.a.transpose(1, 2))
            gram_g = torch.bmm(self.g, self.g.transpose(1, 2))
            return (gram_a * gram_g).sum((1, 2))
        return super().squared_norm()

    def weighted_sum(self, weights: Tensor) -> Tensor:
        weighted = self.g * weights.to(self.g.dtype)[:, None, None]
        return weighted.flatten(0, 1).T @ self.a.flatten(0, 1)


class _EmbeddingWeight(_Contribution):
    """``grad E_i = sum_t onehot(id_{i,t}) g_{i,t}^T`` of an ``Embedding``, kept as ids ``[B, T]``, ``g [B, T, d]``."""

    def __init__(self, ids: Tensor, g: Tensor, num_embeddings: int) -> None:
        self.ids, self.g, self.num_embeddings = ids, g, num_embeddings

    def materialize(self) -> Tensor:
        size, dim = self.g.shape[0], self.g.shape[2]
        weight = self.g.new_zeros(size, self.num_embeddings, dim)
        return weight.scatter_add_(1, self.ids.unsqueeze(-1).expand(-1, -1, dim), self.g)

    def squared_norm(self) -> Tensor:
        same_token = self.ids.unsqueeze(2) == self.ids.unsqueeze(1)
        return (torch.bmm(self.g, self.g.transpose(1, 2)) * same_token).sum((1, 2))

    def weighted_sum(self, weights: Tensor) -> Tensor:
        weighted = self.g * weights.to(self.g.dtype)[:, None, None]
        total = self.g.new_zeros(self.num_embeddings, self.g.shape[2])
        return total.index_add_(0, self.ids.flatten(), weighted.flatten(0, 1))


def _linear(module: nn.Linear, args: tuple[Any, ...], g: Tensor) -> dict[str, _Contribution]:
    size = g.shape[0]
    a = args[0].reshape(size, -1, module.in_features)
    g = g.reshape(size, -1, module.out_features)
    contributions: dict[str, _Contribution] = {"weight": _LinearWeight(a, g)}
    if module.bias is not None:
        contributions["bias"] = _Contribution(g.sum(1))
    return contributions


def _embedding(module: nn.Embedding, args: tuple[Any, ...], g: Tensor) -> dict[str, _Contribution]:
    size = g.shape[0]
    ids = args[0].reshape(size, -1)
    g = g.reshape(size, -1, module.embedding_dim)
    if module.padding_idx is not None:
        g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)
    return {"weight": _EmbeddingWeight(ids, g, module.num_embeddings)}


def _vector_jacobian(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], g: Tensor) -> dict[str, Tensor]:
    """``d <module(args_i), g_i> / d params`` for every sample ``i``, with ``torch.func``."""
    size = g.shape[0]
    arg_dims = tuple(vmap_in_dims(a, size) for a in args)
    kwarg_dims = vmap_in_dims(kwargs, size)

    def inner_product(weights: dict[str, Tensor], one_args: tuple[Any, ...], one_kwargs: dict[str, Any], g_i: Tensor):
        batched_args = tuple(add_sample_dim(a, d) for a, d in zip(one_args, arg_dims, strict=True))
        out = functional_call(module, weights, batched_args, add_sample_dim(one_kwargs, kwarg_dims))
        return (out * g_i.unsqueeze(0)).sum()

    weights = {name: p.detach() for name, p in module.named_parameters(recurse=False) if p.requires_grad}
    compute = vmap(grad(inner_product), in_dims=(None, arg_dims, kwarg_dims, 0), randomness="error")
    return compute(weights, args, kwargs, g)


def _layer_contributions(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], g: Tensor
) -> dict[str, _Contribution]:
    if type(module) is nn.Linear and not kwargs:
        return _linear(module, args, g)
    if type(module) is nn.Embedding and not kwargs and module.max_norm is None:
        return _embedding(module, args, g)
    return {name: _Contribution(t) for name, t in _vector_jacobian(module, args, kwargs, g).items()}


class LayerwiseGradients(PerSampleGradients):
    """Per-sample gradients as the per-layer contributions of every call of every trainable layer."""

    def __init__(self, params: Mapping[str, nn.Parameter], size: int) -> None:
        self.params = dict(params)
        self.size = size
        self.contributions: dict[str, list[_Contribution]] = {name: [] for name in params}

    def squared_norms(self) -> dict[str, Tensor]:
        norms = {}
        for name, parts in self.contributions.items():
            if len(parts) == 1:
                norms[name] = parts[0].squared_norm()
            else:  # a shared parameter: the norm of a sum needs the summed per-sample gradients
                norms[name] = self.materialize_one(name).flatten(1).pow(2).sum(1)
        return norms

    def weighted_sum(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        totals = {}
        for name, parts in self.contributions.items():
            total = parts[0].weighted_sum(weights[name]) if parts else torch.zeros_like(self.params[name])
            for part in parts[1:]:
                total = total + part.weighted_sum(weights[name])
            totals[name] = total
        return totals

    def materialize_one(self, name: str) -> Tensor:
        """``[B, *shape]`` per-sample gradients of parameter ``name``."""
        total = self.params[name].new_zeros(self.size, *self.params[name].shape)
        for part in self.contributions[name]:
            total += part.materialize()
        return total

    def materialize(self) -> dict[str, Tensor]:
        return {name: self.materialize_one(name) for name in self.contributions}


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_detach(v) for v in value)
    return value


def _per_sample_view(value: Any, size: int) -> Any:
    """A tensor with a leading dimension of 1 expanded (a view) to ``size`` samples; anything else unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1:
        return value.expand(size, *value.shape[1:])
    return value


def layerwise_per_sample_gradients(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
) -> PerSampleResult:
    """Per-sample gradients of ``sample_losses(model(x), batch)`` w.r.t. ``params``, layer by layer.

    Every parameter in ``params`` must be used only inside the forward of the module that owns it, on
    inputs whose first dimension is the batch (:func:`check_layerwise_covers` verifies this once per model);
    a layer called once for the whole batch (leading dimension 1, broadcast later, as BERT's position
    embeddings) gets its output expanded to the batch so that every sample's gradient stays its own.
    """
    wanted = {id(p): name for name, p in params.items()}
    owners: dict[nn.Module, dict[str, str]] = {}
    for module in model.modules():
        local = {pname: wanted[id(p)] for pname, p in module.named_parameters(recurse=False) if id(p) in wanted}
        if local:
            owners[module] = local
    calls: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any], Tensor]] = []
    size = batch_size(batch)

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise ConfigError(
                f"optimizer.per_sample_gradients=layerwise needs layers with trainable parameters to return one "
                f"tensor, but {type(module).__name__} returns {type(output).__name__}; use per_sample_gradients=vmap"
            )
        shared = size > 1 and output.dim() > 0 and output.shape[0] == 1
        if shared:
            # One call serves the whole batch by broadcasting (e.g. BERT's position embeddings of position ids
            # [1, T]); its output gradient would be summed over samples. Hand every sample its own view.
            args = tuple(_per_sample_view(a, size) for a in args)
            output = _per_sample_view(output, size)
        calls.append((module, _detach(args), _detach(kwargs), output))
        return output if shared else None

    handles = [module.register_forward_hook(record, with_kwargs=True) for module in owners]
    try:
        logits = model(batch["x"])
    finally:
        for handle in handles:
            handle.remove()
    losses = sample_losses(logits, batch)
    grads = LayerwiseGradients(params, batch_size(batch))
    used = [call for call in calls if call[3].requires_grad]
    if used:
        output_grads = torch.autograd.grad(losses.sum(), [call[3] for call in used], allow_unused=True)
        for (module, args, kwargs, _), g in zip(used, output_grads, strict=True):
            if g is not None:
                for pname, part in _layer_contributions(module, args, kwargs, g).items():
                    grads.contributions[owners[module][pname]].append(part)
    return PerSampleResult(grads, logits.detach(), losses.detach())


def check_layerwise_covers(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
) -> None:
    """Raise :class:`ConfigError` unless the layerwise per-sample gradients sum to the batch gradient.

    They do not when a parameter is used outside the forward of the module that owns it (e.g. an output
    layer that reuses the embedding matrix through ``F.linear``); such models need
    ``per_sample_gradients=vmap``. Runs the model in eval mode so that dropout is the same in both passes.
    """
    was_training = model.training
    model.eval()
    try:
        result = layerwise_per_sample_gradients(model, params, sample_losses, batch)
        summed = result.grads.weighted_sum({name: p.new_ones(batch_size(batch)) for name, p in params.items()})
        total = torch.autograd.grad(
            sample_losses(model(batch["x"]), batch).sum(), list(params.values()), allow_unused=True
        )
    finally:
        model.train(was_training)
    for (name, p), expected in zip(params.items(), total, strict=True):
        expected = torch.zeros_like(p) if expected is None else expected
        if not torch.allclose(summed[name], expected, rtol=1e-3, atol=1e-5):
            raise ConfigError(
                f"optimizer.per_sample_gradients=layerwise cannot attribute the gradient of parameter '{name}' "
                f"to samples: it is used outside the forward of the module that owns it (e.g. tied weights "
                f"applied with F.linear). Set optimizer.per_sample_gradients=vmap."
            )
