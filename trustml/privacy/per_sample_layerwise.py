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
identities instead of ``a_i a_i^T``. Layers that share one input (a transformer's query, key and value
projections) share its Gram matrix ``a_i a_i^T``. ``LayerNorm`` (``y = x_hat * w + b``) has the closed form
``grad w_i = sum_t g_{i,t} * x_hat_{i,t}``, ``grad b_i = sum_t g_{i,t}``. Any other layer (convolutions, custom
modules) gets its per-sample gradients materialized as the vector-Jacobian product
``vmap(grad(<layer(a_i), g_i>))`` with ``torch.func``. The model's own forward runs unchanged, so models with
data-dependent control flow (Hugging Face encoders) work, and frozen layers cost what they cost in non-private
training.

Every layer must see its samples along the first dimension of its output (row ``i`` belongs to sample ``i``):
a layer whose output's first dimension is neither the batch size nor 1 (e.g. a ``Linear`` on a sequence-first
``[T, B, d]`` tensor) is refused when it is called, and :func:`check_layerwise_covers` compares the per-sample
norms with an independent per-sample computation once per model, which catches what shapes cannot (``T == B``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call, grad, vmap

from trustml.errors import ConfigError
from trustml.privacy.batching import Batch, add_sample_dim, batch_size, split_batch, vmap_in_dims
from trustml.privacy.per_sample import PerSampleGradients, PerSampleResult, SampleLossFn


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

    def add_weighted_sum_(self, weights: Tensor, total: Tensor) -> None:
        """In place: ``total += sum_i w_i grad_i``."""
        total.add_(self.weighted_sum(weights))


class GramCache:
    """Per-sample Gram matrices ``a_i a_i^T`` (``[B, T, T]``) of one step's layer inputs, computed once per input.

    Layers fed the same tensor (a transformer's query, key and value projections read the same hidden states)
    look it up by its storage, offset, shape and stride; every recorded input stays alive for the step, so two
    live tensors with the same key are the same values.
    """

    def __init__(self) -> None:
        self._grams: dict[tuple[Any, ...], Tensor] = {}

    def gram(self, a: Tensor) -> Tensor:
        key = (a.untyped_storage().data_ptr(), a.storage_offset(), tuple(a.shape), a.stride(), a.dtype)
        if key not in self._grams:
            self._grams[key] = torch.bmm(a, a.transpose(1, 2))
        return self._grams[key]


class _LinearWeight(_Contribution):
    """``grad W_i = g_i^T a_i`` of a ``Linear`` layer, kept as activations ``a [B, T, in]`` and ``g [B, T, out]``."""

    def __init__(self, a: Tensor, g: Tensor, grams: GramCache) -> None:
        self.a, self.g, self.grams = a, g, grams

    def materialize(self) -> Tensor:
        return torch.bmm(self.g.transpose(1, 2), self.a)

    def squared_norm(self) -> Tensor:
        positions, d_in, d_out = self.a.shape[1], self.a.shape[2], self.g.shape[2]
        if positions == 1:
            return self.a.pow(2).sum((1, 2)) * self.g.pow(2).sum((1, 2))
        if positions * (d_in + d_out) < d_in * d_out:
            gram_g = torch.bmm(self.g, self.g.transpose(1, 2))
            return (self.grams.gram(self.a) * gram_g).sum((1, 2))
        return super().squared_norm()

    def _weighted_factors(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``(G, A)`` with ``G A = sum_i w_i g_i^T a_i``: the weights scale the narrower of ``a`` and ``g``."""
        a, g = self.a.flatten(0, 1), self.g.flatten(0, 1)
        rows = weights.to(g.dtype).repeat_interleave(self.a.shape[1])[:, None]
        if a.shape[1] < g.shape[1]:
            return g.T, a * rows
        return (g * rows).T, a

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``sum_i w_i g_i^T a_i`` (one matrix product)."""
        left, right = self._weighted_factors(weights)
        return left @ right

    def add_weighted_sum_(self, weights: Tensor, total: Tensor) -> None:
        """In place: ``total += sum_i w_i g_i^T a_i`` (``addmm_``: no temporary of the weight's size)."""
        left, right = self._weighted_factors(weights)
        total.addmm_(left, right)


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
        total = self.g.new_zeros(self.num_embeddings, self.g.shape[2])
        self.add_weighted_sum_(weights, total)
        return total

    def add_weighted_sum_(self, weights: Tensor, total: Tensor) -> None:
        """In place: ``total[id_{i,t}] += w_i g_{i,t}`` (the table's other rows are untouched)."""
        weighted = self.g * weights.to(self.g.dtype)[:, None, None]
        total.index_add_(0, self.ids.flatten(), weighted.flatten(0, 1))


def _linear(module: nn.Linear, args: tuple[Any, ...], g: Tensor, grams: GramCache) -> dict[str, _Contribution]:
    size = g.shape[0]
    a = args[0].reshape(size, -1, module.in_features)
    g = g.reshape(size, -1, module.out_features)
    contributions: dict[str, _Contribution] = {"weight": _LinearWeight(a, g, grams)}
    if module.bias is not None:
        contributions["bias"] = _Contribution(g.sum(1))
    return contributions


def _layer_norm(module: nn.LayerNorm, args: tuple[Any, ...], g: Tensor) -> dict[str, _Contribution]:
    """``grad w_i = sum_t g_{i,t} * x_hat_{i,t}`` and ``grad b_i = sum_t g_{i,t}`` (``[B, *normalized_shape]``)."""
    size, shape = g.shape[0], tuple(module.normalized_shape)
    x_hat = F.layer_norm(args[0], shape, None, None, module.eps)
    g = g.reshape(size, -1, *shape)
    contributions: dict[str, _Contribution] = {}
    if module.weight is not None and module.weight.requires_grad:
        contributions["weight"] = _Contribution((g * x_hat.reshape(size, -1, *shape)).sum(1))
    if module.bias is not None and module.bias.requires_grad:
        contributions["bias"] = _Contribution(g.sum(1))
    return contributions


def _embedding(module: nn.Embedding, args: tuple[Any, ...], g: Tensor) -> dict[str, _Contribution]:
    size = g.shape[0]
    ids = args[0].reshape(size, -1)
    g = g.reshape(size, -1, module.embedding_dim)
    if module.padding_idx is not None:
        g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)
    return {"weight": _EmbeddingWeight(ids, g, module.num_embeddings)}


def _shared_dims(value: Any) -> Any:
    """``vmap`` in_dims that pass ``value`` (a tensor, or a dict of them) whole to every sample."""
    if isinstance(value, dict):
        return {k: _shared_dims(v) for k, v in value.items()}
    return None


def _vector_jacobian(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], g: Tensor, shared: bool = False
) -> dict[str, Tensor]:
    """``d <module(args_i), g_i> / d params`` for every sample ``i``, with ``torch.func``.

    ``shared``: the call computed one output ``[1, ...]`` for the whole batch, so every sample's gradient is
    ``d <module(args), g_i> / d params`` with all inputs shared (none of them is split into samples, even one
    whose first dimension happens to equal the batch size, such as BART's decoder position ids ``[T]``).
    """
    size = g.shape[0]
    arg_dims = tuple(_shared_dims(a) if shared else vmap_in_dims(a, size) for a in args)
    kwarg_dims = _shared_dims(kwargs) if shared else vmap_in_dims(kwargs, size)

    def inner_product(weights: dict[str, Tensor], one_args: tuple[Any, ...], one_kwargs: dict[str, Any], g_i: Tensor):
        batched_args = tuple(add_sample_dim(a, d) for a, d in zip(one_args, arg_dims, strict=True))
        out = functional_call(module, weights, batched_args, add_sample_dim(one_kwargs, kwarg_dims))
        return (out * g_i.unsqueeze(0)).sum()

    weights = {name: p.detach() for name, p in module.named_parameters(recurse=False) if p.requires_grad}
    compute = vmap(grad(inner_product), in_dims=(None, arg_dims, kwarg_dims, 0), randomness="error")
    return compute(weights, args, kwargs, g)


@dataclass
class _Call:
    """One call of a trainable layer: its (detached) inputs and the autograd edge of its output, row ``i`` being
    sample ``i``'s.

    The edge (the output's ``grad_fn`` and output index), not the output tensor, is kept: the gradient flowing
    into it is the output gradient, and the output's memory is freed as soon as the backward pass no longer needs
    it (a transformer's query/key/value and FFN outputs would otherwise stay alive until the whole step ends).
    It also names the output as the layer returned it, before any later in-place operation on that tensor.
    ``shared``: the layer computed one output ``[1, ...]`` for the whole batch (e.g. position embeddings of
    position ids ``[1, T]``), which the hook handed on expanded to ``[B, ...]``.
    """

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output_edge: GradientEdge
    shared: bool


def _layer_contributions(call: _Call, g: Tensor, grams: GramCache) -> dict[str, _Contribution]:
    module, kwargs = call.module, call.kwargs
    if not kwargs:
        args = tuple(_per_sample_view(a, g.shape[0]) for a in call.args) if call.shared else call.args
        if type(module) is nn.Linear:
            return _linear(module, args, g, grams)
        if type(module) is nn.LayerNorm:
            return _layer_norm(module, args, g)
        if type(module) is nn.Embedding and module.max_norm is None:
            return _embedding(module, args, g)
    return {name: _Contribution(t) for name, t in _vector_jacobian(module, call.args, kwargs, g, call.shared).items()}


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
        totals = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.add_weighted_sum_(weights, totals)
        return totals

    def add_weighted_sum_(self, weights: Mapping[str, Tensor], totals: Mapping[str, Tensor]) -> None:
        """In place: ``totals[p] += sum_i w_i grad_i(p)`` for every parameter ``p`` in ``totals`` (all, or some)."""
        for name, total in totals.items():
            for part in self.contributions[name]:
                part.add_weighted_sum_(weights[name], total)

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


def _not_batch_first(name: str, module: nn.Module, output: Tensor, size: int) -> str:
    """The refusal of a layer whose output rows are not the batch's samples."""
    shape = list(output.shape)
    if output.dim() == 0:
        what = "returns a scalar, which has no per-sample rows"
    else:
        batch_dims = [d for d in range(1, output.dim()) if shape[d] == size]
        what = f"returns shape {shape}, whose first dimension is not the batch size {size}"
        if batch_dims:
            what += f" (dimension {batch_dims[0]} is: the layer runs on sequence-first inputs such as [T, B, ...])"
    return (
        f"optimizer.per_sample_gradients=layerwise cannot attribute the gradients of layer '{name}' "
        f"({type(module).__name__}) to samples: it {what}. The layerwise engine reads sample i's gradient from "
        f"row i of every layer's input and output. Make the layer batch-first (inputs [batch, ...], e.g. "
        f"batch_first=True or transpose before the layer), or set optimizer.per_sample_gradients=vmap."
    )


def layerwise_per_sample_gradients(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
) -> PerSampleResult:
    """Per-sample gradients of ``sample_losses(model(x), batch)`` w.r.t. ``params``, layer by layer.

    Every parameter in ``params`` must be used only inside the forward of the module that owns it, on
    inputs whose first dimension is the batch (:func:`check_layerwise_covers` verifies this once per model);
    a layer called once for the whole batch (leading dimension 1, broadcast later, as BERT's position
    embeddings) gets its output expanded to the batch so that every sample's gradient stays its own. A
    trainable layer whose output's first dimension is neither the batch size ``B`` nor 1 is refused with
    :class:`ConfigError` naming it (e.g. a ``Linear`` applied to a sequence-first ``[T, B, d]`` tensor).
    """
    wanted = {id(p): name for name, p in params.items()}
    owners: dict[nn.Module, dict[str, str]] = {}
    module_names: dict[nn.Module, str] = {}
    for module_name, module in model.named_modules():
        local = {pname: wanted[id(p)] for pname, p in module.named_parameters(recurse=False) if id(p) in wanted}
        if local:
            owners[module] = local
            module_names[module] = module_name or type(module).__name__
    calls: list[_Call] = []
    size = batch_size(batch)

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise ConfigError(
                f"optimizer.per_sample_gradients=layerwise needs layers with trainable parameters to return one "
                f"tensor, but {type(module).__name__} returns {type(output).__name__}; use per_sample_gradients=vmap"
            )
        if not output.requires_grad:  # a call outside the graph of the loss (no_grad, frozen inputs and weights)
            return None
        shared = size > 1 and output.dim() > 0 and output.shape[0] == 1
        if not shared and (output.dim() == 0 or output.shape[0] != size):
            raise ConfigError(_not_batch_first(module_names[module], module, output, size))
        if shared:
            # One call serves the whole batch by broadcasting (e.g. BERT's position embeddings of position ids
            # [1, T]); its output gradient would be summed over samples. Hand every sample its own view.
            output = _per_sample_view(output, size)
        calls.append(_Call(module, _detach(args), _detach(kwargs), get_gradient_edge(output), shared))
        return output if shared else None

    handles = [module.register_forward_hook(record, with_kwargs=True) for module in owners]
    try:
        logits = model(batch["x"])
    finally:
        for handle in handles:
            handle.remove()
    losses = sample_losses(logits, batch)
    grads = LayerwiseGradients(params, size)
    if calls:
        edges = [call.output_edge for call in calls]
        output_grads = torch.autograd.grad(losses.sum(), edges, allow_unused=True)
        grams = GramCache()
        for call, g in zip(calls, output_grads, strict=True):
            if g is not None:
                for pname, part in _layer_contributions(call, g, grams).items():
                    grads.contributions[owners[call.module][pname]].append(part)
    return PerSampleResult(grads, logits.detach(), losses.detach())


#: Samples of the first batch that :func:`check_layerwise_covers` also differentiates one at a time.
PROBE_SAMPLES = 4


def probe_squared_norms(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch, count: int
) -> dict[str, Tensor]:
    """``||d loss_i / d p||^2`` for the first ``count`` samples ``i`` of ``batch``, each run alone.

    The independent reference of the per-sample attribution: sample ``i`` is sliced out as a batch of one,
    and ``torch.autograd.grad`` of its own loss ``sample_losses(model(x_i), batch_i)`` gives its gradient.
    Returns ``{name: [count]}``.
    """
    rows: list[list[Tensor]] = []
    for one in islice(split_batch(batch, 1), count):
        loss = sample_losses(model(one["x"]), one).sum()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        rows.append([loss.new_zeros(()) if g is None else g.detach().pow(2).sum() for g in grads])
    return {name: torch.stack([row[j] for row in rows]) for j, name in enumerate(params)}


def _probe_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the attribution probe: ``1e-3``, looser for half precision (``8 eps``)."""
    return max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def _allclose_in_chunks(actual: Tensor, expected: Tensor, rtol: float, atol: float, chunk: int = 2**20) -> bool:
    """``torch.allclose(actual, expected, rtol, atol)`` over ``chunk`` elements at a time: its temporaries (the
    difference, the tolerance) stay a few MiB instead of several copies of a parameter as large as a 30,522 x 384
    word-embedding table."""
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    return all(
        torch.allclose(actual[i : i + chunk], expected[i : i + chunk], rtol=rtol, atol=atol)
        for i in range(0, actual.numel(), chunk)
    )


def check_layerwise_covers(
    model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
) -> None:
    """Raise :class:`ConfigError` unless the layerwise engine attributes ``batch``'s gradient to its samples.

    Two checks, on the model in eval mode (dropout off, so that a sample alone has the loss it has in the batch;
    batch-dependent layers such as BatchNorm are refused by :mod:`trustml.privacy.compat`):

    * **sum**: ``sum_i g_i`` (the layerwise per-sample gradients) equals the batch gradient
      ``d sum_i loss_i / d p``. It does not when a parameter is used outside the forward of the module that owns
      it (e.g. an output layer that reuses the embedding matrix through ``F.linear``): such models need
      ``per_sample_gradients=vmap``.
    * **attribution** (the sum is the same however rows are grouped into samples): for the first
      ``k = min(PROBE_SAMPLES, B)`` samples, ``||g_i||^2`` of every parameter equals that of
      :func:`probe_squared_norms` (each sample run alone), within
      ``|n_layerwise - n_alone| <= rtol n_alone + 1e-5 sum_p n_alone(p)`` (``rtol`` 1e-3 in float32). A layer
      that mixes samples (e.g. a ``Linear`` on a sequence-first ``[T, B, d]`` tensor with ``T == B``, whose
      shapes look batch-first) fails it.

    Costs one batch backward, ``k`` single-sample forward/backward passes and one layerwise pass; the DP
    optimizers run it once per model. Its peak memory is about that of a private step: the batch gradient and the
    single-sample ones are taken before the layerwise pass (their activations and gradients are never alive
    together with its layer inputs and output gradients) and ``sum_i g_i`` is formed one parameter at a time.
    """
    was_training = model.training
    model.eval()
    try:
        size = batch_size(batch)
        total = torch.autograd.grad(
            sample_losses(model(batch["x"]), batch).sum(), list(params.values()), allow_unused=True
        )
        count = min(PROBE_SAMPLES, size)
        alone = probe_squared_norms(model, params, sample_losses, batch, count) if count else {}
        result = layerwise_per_sample_gradients(model, params, sample_losses, batch)
    finally:
        model.train(was_training)
    for (name, p), expected in zip(params.items(), total, strict=True):
        expected = torch.zeros_like(p) if expected is None else expected
        summed = torch.zeros_like(p)
        result.grads.add_weighted_sum_({name: p.new_ones(size)}, {name: summed})
        if not _allclose_in_chunks(summed, expected, rtol=1e-3, atol=1e-5):
            raise ConfigError(
                f"optimizer.per_sample_gradients=layerwise cannot attribute the gradient of parameter '{name}' "
                f"to samples: it is used outside the forward of the module that owns it (e.g. tied weights "
                f"applied with F.linear). Set optimizer.per_sample_gradients=vmap."
            )
    if not count:
        return
    layerwise = {name: norm[:count].detach().double() for name, norm in result.grads.squared_norms().items()}
    reference = {name: norm.double() for name, norm in alone.items()}
    per_sample_total = torch.stack(list(reference.values())).sum(0)
    for name, p in params.items():
        rtol = _probe_tolerance(p.dtype)
        error = (layerwise[name] - reference[name]).abs()
        allowed = rtol * reference[name] + 1e-5 * per_sample_total + 1e-12
        if bool((error > allowed).any()):
            i = int((error - allowed).argmax())
            layer = name.rpartition(".")[0] or name
            raise ConfigError(
                f"optimizer.per_sample_gradients=layerwise attributes the gradient of parameter '{name}' (layer "
                f"'{layer}') to the wrong samples: sample {i} gets squared norm {float(layerwise[name][i]):.6g}, but "
                f"differentiating that sample alone gives {float(reference[name][i]):.6g}. The layer mixes the "
                f"rows of different samples, e.g. it runs on sequence-first inputs [T, B, ...] (with T == B the "
                f"shapes look batch-first), so clipping and the privacy guarantee would be wrong. Make the layer "
                f"batch-first (inputs [batch, ...], e.g. batch_first=True or transpose before the layer), or set "
                f"optimizer.per_sample_gradients=vmap."
            )
