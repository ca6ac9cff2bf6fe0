"""Clipping and Gaussian noise of the DP-SGD mechanism."""

from __future__ import annotations

import math

import pytest
import torch

from trustml.privacy import mechanism
from trustml.privacy.mechanism import add_gaussian_noise_, clipped_sum, clipping_weights
from trustml.privacy.per_sample import MaterializedGradients


def _grads() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 0.5, 3.0, 40.0]).view(4, 1, 1)  # some samples below, some above the bound
    return {
        "w": torch.randn(4, 3, 2, generator=generator) * scales,
        "b": torch.randn(4, 3, generator=generator) * scales.view(4, 1),
    }


def test_flat_clipping_matches_a_loop_and_bounds_every_sample() -> None:
    grads, bound = _grads(), 1.0
    summed = clipped_sum(MaterializedGradients(grads), bound, "flat")
    expected = {name: torch.zeros_like(g[0]) for name, g in grads.items()}
    for i in range(4):
        norm = math.sqrt(sum(float(g[i].pow(2).sum()) for g in grads.values()))
        scale = min(1.0, bound / (norm + 1e-6))
        clipped_norm = norm * scale
        assert clipped_norm <= bound + 1e-5
        for name, g in grads.items():
            expected[name] += g[i] * scale
    for name in grads:
        torch.testing.assert_close(summed[name], expected[name])


def test_small_gradients_are_not_scaled() -> None:
    grads = {"w": torch.full((2, 3), 0.01)}
    torch.testing.assert_close(clipped_sum(MaterializedGradients(grads), 1.0, "flat")["w"], grads["w"].sum(0))


def test_per_layer_clipping_bounds_each_tensor_by_c_over_sqrt_k() -> None:
    grads, bound = _grads(), 2.0
    weights = clipping_weights(MaterializedGradients(grads).squared_norms(), bound, "per_layer")
    for name, g in grads.items():
        clipped = g * weights[name].view(-1, *[1] * (g.dim() - 1))
        assert (clipped.flatten(1).norm(dim=1) <= bound / math.sqrt(2) + 1e-5).all()
        # the two small samples keep their gradient unchanged
        torch.testing.assert_close(clipped[:2], g[:2])
    total = torch.cat([(g * weights[n].view(-1, *[1] * (g.dim() - 1))).flatten(1) for n, g in grads.items()], 1)
    assert (total.norm(dim=1) <= bound + 1e-5).all()


def test_unknown_clipping_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="flat"):
        clipped_sum(MaterializedGradients(_grads()), 1.0, "global")


def test_noise_is_seeded_and_has_the_requested_std() -> None:
    zeros = {"w": torch.zeros(200, 200)}

    def noisy(seed: int) -> torch.Tensor:
        return add_gaussian_noise_({"w": zeros["w"].clone()}, 0.7, torch.Generator().manual_seed(seed), {})["w"]

    first, again, other = noisy(3), noisy(3), noisy(4)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert abs(float(first.std()) - 0.7) < 0.01
    assert abs(float(first.mean())) < 0.01


def test_in_place_noise_is_seeded_chunked_and_keeps_only_a_small_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mechanism, "NOISE_CHUNK", 64)  # several chunks per tensor, one partial
    sums = {"w": torch.zeros(30, 20), "b": torch.zeros(20)}

    def noisy(seed: int, scratch: dict) -> dict[str, torch.Tensor]:
        copies = {k: v.clone() for k, v in sums.items()}
        return dict(add_gaussian_noise_(copies, 0.7, torch.Generator().manual_seed(seed), scratch))

    scratch: dict = {}
    first = noisy(3, scratch)
    (buffer,) = scratch.values()
    assert buffer.numel() == 64
    again, other = noisy(3, scratch), noisy(4, scratch)
    assert list(scratch.values())[0] is buffer
    for name in sums:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
        assert not torch.equal(first[name], other[name])
    values = torch.cat([t.flatten() for t in first.values()])
    assert abs(float(values.std()) - 0.7) < 0.05 and abs(float(values.mean())) < 0.05
    # every element got its own draw (no chunk repeated)
    assert values.unique().numel() == values.numel()


def test_automatic_clipping_normalizes_every_sample_below_the_bound() -> None:
    grads, bound, gamma = _grads(), 2.0, 0.01
    weights = clipping_weights(MaterializedGradients(grads).squared_norms(), bound, "automatic", gamma)
    total = torch.cat([(g * weights[n].view(-1, *[1] * (g.dim() - 1))).flatten(1) for n, g in grads.items()], 1)
    norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
    # ||g_i C / (||g_i|| + gamma)|| = C ||g_i|| / (||g_i|| + gamma) < C: the same sensitivity as flat clipping
    torch.testing.assert_close(total.norm(dim=1), bound * norms / (norms + gamma))
    assert (total.norm(dim=1) < bound).all()
    # unlike flat clipping, a small gradient is scaled up towards norm C (no bound below which g is left alone)
    assert norms[1] < 1.6 and total.norm(dim=1)[1] > 1.95  # flat clipping at C = 2 would leave it at 1.52
