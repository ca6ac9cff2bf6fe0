"""WEAT effect size (Caliskan, Bryson & Narayanan 2017) on vectors, batched over leading dimensions.

For target sets X, Y and attribute sets A, B of word vectors:

- association of a word: ``s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)``;
- effect size: ``d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B)``,
  with the sample standard deviation (``ddof=1``) over the ``|X| + |Y|`` target words;
- within-draw variance, as CEAT (Guo & Caliskan 2021) uses it for the inverse-variance weights of its
  random-effects combination: ``v = std_{w in X u Y}^2 s(w, A, B)``, the sample variance (``ddof=1``) of the
  association scores over ``X u Y`` (the paper's in-sample variance ``V_i``; the authors' code computes it as
  ``np.std(s, ddof=1) ** 2``), so ``d = delta_mean / sqrt(v)``.

Because the mean of cosines is the cosine with the mean of unit vectors, ``s(w, A, B) = w_hat . (mean_a a_hat -
mean_b b_hat)`` with ``u_hat = u / ||u||``: one matrix-vector product per set instead of all pairwise cosines.
A zero vector has cosine 0 with everything (its norm is clamped).

Degenerate input: if every association score in ``X u Y`` is the same (standard deviation 0, e.g. all target
vectors identical), the effect size is 0/0. This module then raises :class:`DegenerateEffectError` (a
``DataError``) naming the batch entries, rather than returning NaN or an arbitrary value; statistics run in
float64 and a standard deviation ``<= STD_TOLERANCE`` counts as 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustml.errors import ConfigError, DataError

#: A standard deviation of the association scores at or below this (in float64) is treated as zero.
STD_TOLERANCE = 1e-10


class DegenerateEffectError(DataError):
    """All association scores ``s(w, A, B)`` over ``X u Y`` are equal: the effect size is undefined (0/0)."""


def unit(vectors: Tensor) -> Tensor:
    """``u / ||u||`` along the last dimension (a zero vector stays zero), in float64."""
    vectors = vectors.to(torch.float64)
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def association(w: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)`` for every word vector in ``w``.

    Shapes: ``w`` is ``(..., n, dim)``, ``a`` is ``(..., n_a, dim)``, ``b`` is ``(..., n_b, dim)`` with
    broadcastable leading dimensions; returns ``(..., n)`` in float64.
    """
    _check_sets(w=w, a=a, b=b)
    return _scores(w, _direction(a, b))


def effect_size_and_variance(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """WEAT effect size ``d`` and CEAT's within-draw variance ``v`` for each batch entry.

    ``d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B)`` and
    ``v = std_{w in X u Y}^2 s(w, A, B)``, both with the sample standard deviation (``ddof=1``).

    Shapes: ``x`` ``(..., n_x, dim)``, ``y`` ``(..., n_y, dim)``, ``a`` ``(..., n_a, dim)``, ``b``
    ``(..., n_b, dim)`` (leading dimensions broadcast); returns two float64 tensors of the batch shape.
    Raises :class:`DegenerateEffectError` where the standard deviation is 0 (see the module docstring).
    """
    _check_sets(x=x, y=y, a=a, b=b)
    if x.shape[-2] + y.shape[-2] < 2:
        raise ConfigError("the WEAT effect size needs at least two target words in X u Y")
    direction = _direction(a, b)
    s_x, s_y = _scores(x, direction), _scores(y, direction)
    batch = torch.broadcast_shapes(s_x.shape[:-1], s_y.shape[:-1])
    s_x = s_x.expand(*batch, s_x.shape[-1])
    s_y = s_y.expand(*batch, s_y.shape[-1])
    s_all = torch.cat([s_x, s_y], dim=-1)
    variance = s_all.var(dim=-1, correction=1)
    std = variance.sqrt()
    degenerate = std <= STD_TOLERANCE
    if bool(degenerate.any()):
        where = degenerate.nonzero().tolist()
        shown = ", ".join(str(tuple(i)) for i in where[:5]) + (" ..." if len(where) > 5 else "")
        raise DegenerateEffectError(
            f"the association scores s(w, A, B) are equal for every target word in X u Y (standard deviation 0) "
            f"in {len(where)} batch entr{'y' if len(where) == 1 else 'ies'} (index {shown}): the WEAT effect size "
            "is 0/0. Check that the target words' vectors differ (e.g. distinct words, contexts or encoder)."
        )
    effect = (s_x.mean(dim=-1) - s_y.mean(dim=-1)) / std
    return effect, variance


def effect_size(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """WEAT effect size ``d = (mean_X s - mean_Y s) / std_{X u Y} s`` (``ddof=1``); see
    :func:`effect_size_and_variance` for shapes and the degenerate case."""
    return effect_size_and_variance(x, y, a, b)[0]


def _direction(a: Tensor, b: Tensor) -> Tensor:
    """``mean_a a_hat - mean_b b_hat``: ``s(w, A, B) = w_hat . direction``."""
    return unit(a).mean(dim=-2) - unit(b).mean(dim=-2)


def _scores(w: Tensor, direction: Tensor) -> Tensor:
    return torch.einsum("...nd,...d->...n", unit(w), direction)


def _check_sets(**sets: Tensor) -> None:
    for name, tensor in sets.items():
        if tensor.dim() < 2 or tensor.shape[-2] == 0:
            raise ConfigError(
                f"word set {name.upper()} must be a non-empty (..., n_words, dim) tensor, got shape "
                f"{tuple(tensor.shape)}"
            )
    dims = {tensor.shape[-1] for tensor in sets.values()}
    if len(dims) > 1:
        raise ConfigError(f"all word vectors must have the same dimension, got {sorted(dims)}")
