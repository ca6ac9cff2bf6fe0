"""The per-sample-id output cache: computes each id once, serves partial hits, grows with new ids."""

from __future__ import annotations

import torch

from trustml.data.base import Split
from trustml.methods.old_model import OutputCache


def test_cache_computes_each_sample_once() -> None:
    seen: list[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        seen.extend(x[:, 0].long().tolist())
        return x * 10

    cache = OutputCache(compute)
    x = torch.arange(8.0).reshape(4, 2)  # row r has first feature 2r
    index = torch.tensor([5, 1, 7, 3])
    torch.testing.assert_close(cache(x, index), x * 10)
    # ids 1 and 3 are known, 20 is new (beyond the current size: the cache grows), 9 is new
    x2 = torch.tensor([[2.0, 3.0], [100.0, 0.0], [6.0, 7.0], [50.0, 1.0]])
    out = cache(x2, torch.tensor([1, 20, 3, 9]))
    torch.testing.assert_close(out, torch.tensor([[20.0, 30.0], [1000.0, 0.0], [60.0, 70.0], [500.0, 10.0]]))
    assert seen == [0, 2, 4, 6, 100, 50]
    assert cache.samples_computed == 6
    cache(x2, torch.tensor([1, 20, 3, 9]))
    assert cache.samples_computed == 6


def test_fill_precomputes_a_split_in_chunks() -> None:
    calls: list[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.sum(dim=1, keepdim=True)

    split = Split(torch.ones(10, 3), torch.zeros(10), torch.arange(100, 110))
    cache = OutputCache(compute)
    cache.fill(split, batch_size=4, device=torch.device("cpu"))
    assert calls == [4, 4, 2]
    torch.testing.assert_close(cache(split.inputs[:2], torch.tensor([100, 109])), torch.full((2, 1), 3.0))
    assert cache.samples_computed == 10
