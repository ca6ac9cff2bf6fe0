"""What a simulation builds once and reuses across client fits gives what building it per fit gives.

The shortcut batch path draws a plain shuffling loader's batches as iterating the loader does; a client's data
module is reused while its rows stay the same; the shared model's flat binding loads weights and reads updates
as ``set_flat`` / ``get_flat`` do, and gives way to them when something replaced an entry's storage.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.federation.conftest import make_method, trainer_factory
from trustml.data.base import Split, SplitDataset
from trustml.federation.client import ClientTrainer
from trustml.federation.flat_state import FlatBinding, FlatLayout, get_flat, set_flat
from trustml.federation.local_loop import loader_batches, plain_shuffling, stateless
from trustml.privacy.sampling import PoissonBatchSampler, PoissonSamplerFactory


def as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class ListOnly(SplitDataset):
    """A dataset whose ``__getitems__`` accepts only a list of indices, as other datasets may."""

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        assert isinstance(rows, list)
        return super().__getitems__(rows)


def split_of(n: int) -> Split:
    return Split(
        torch.randn(n, 3, generator=torch.Generator().manual_seed(n)), torch.arange(n) % 2, torch.arange(100, 100 + n)
    )


LOADERS = {
    "shuffle": lambda ds: DataLoader(ds, batch_size=16, shuffle=True, collate_fn=as_is),
    "shuffle_loader_generator": lambda ds: DataLoader(
        ds, batch_size=16, shuffle=True, collate_fn=as_is, generator=torch.Generator().manual_seed(3)
    ),
    "shuffle_sampler_generator": lambda ds: DataLoader(
        ds,
        batch_size=16,
        collate_fn=as_is,
        sampler=torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(4)),
    ),
    "sequential": lambda ds: DataLoader(ds, batch_size=16, shuffle=False, collate_fn=as_is),
    "drop_last": lambda ds: DataLoader(ds, batch_size=16, shuffle=True, drop_last=True, collate_fn=as_is),
    "poisson": lambda ds: DataLoader(
        ds, batch_sampler=PoissonBatchSampler.from_batch_size(len(ds), 16, seed=2), collate_fn=as_is
    ),
}


@pytest.mark.parametrize("dataset", [SplitDataset, ListOnly])
@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("n", [1, 16, 40])
def test_loader_batches_are_the_loaders_batches_with_the_same_random_draws(kind, n, dataset) -> None:
    split = split_of(n)

    def batches(draw: Any) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        torch.manual_seed(7)
        drawn = list(draw(LOADERS[kind](dataset(split))))
        return drawn, torch.get_rng_state(), torch.rand(3)  # the global RNG goes on as after the loader

    theirs, their_state, their_next = batches(iter)
    scratch = torch.Generator()
    for draw in (loader_batches, partial(loader_batches, scratch=scratch), partial(loader_batches, scratch=scratch)):
        ours, our_state, our_next = batches(draw)
        assert len(ours) == len(theirs) > 0 or kind == "drop_last"
        for mine, reference in zip(ours, theirs, strict=True):
            assert mine.keys() == reference.keys()
            for key in mine:
                assert torch.equal(mine[key], reference[key]), key
        assert torch.equal(our_state, their_state) and torch.equal(our_next, their_next)


def test_only_plain_shuffling_loaders_without_generators_are_stateless() -> None:
    dataset = SplitDataset(split_of(40))
    loaders = {kind: make(dataset) for kind, make in LOADERS.items()}
    assert {kind for kind, loader in loaders.items() if plain_shuffling(loader)} == {
        "shuffle",
        "shuffle_loader_generator",
        "shuffle_sampler_generator",
    }
    assert {kind for kind, loader in loaders.items() if stateless(loader)} == {"shuffle"}


def test_a_client_keeps_its_data_module_while_its_rows_stay_and_dp_gets_a_fresh_sampler_per_fit(
    digits, tmp_path
) -> None:
    local = ClientTrainer(make_method(digits), digits, trainer_factory(tmp_path))
    first = local.data_of(4, np.arange(10, 30))
    assert local.data_of(4, np.arange(10, 30)) is first  # an equal array, not the same object
    first.setup("fit")
    assert first.train_dataloader() is first.train_dataloader()  # a plain shuffling loader is built once
    moved = local.data_of(4, np.arange(20, 40))  # e.g. a new period of the continual setting
    assert moved is not first and moved.holds(np.arange(20, 40)) and local.data_of(5, np.arange(10, 30)) is not first

    digits.train_batch_sampler_factory = PoissonSamplerFactory(seed=0)
    try:
        private = ClientTrainer(make_method(digits), digits, trainer_factory(tmp_path)).data_of(4, np.arange(10, 30))
        private.setup("fit")
        loaders = [private.train_dataloader() for _ in range(2)]
    finally:
        digits.train_batch_sampler_factory = None
    assert loaders[0] is not loaders[1] and loaders[0].batch_sampler.seed != loaders[1].batch_sampler.seed


@pytest.mark.parametrize("rows", [np.array([7]), np.arange(10, 42), np.arange(3, 123, 3)])
def test_direct_batches_are_the_client_loaders_batches_with_the_same_random_draws(digits, tmp_path, rows) -> None:
    client = ClientTrainer(make_method(digits), digits, trainer_factory(tmp_path)).data_of(0, rows)
    assert client.direct_batching and client.num_train_batches == -(-len(rows) // digits.batch_size)
    scratch = torch.Generator()
    torch.manual_seed(3)
    ours = [batch for _ in range(2) for batch in client.direct_batches(scratch)]  # two epochs
    our_state = torch.get_rng_state()
    assert not client.splits  # no subset of the rows was built
    client.setup("fit")
    torch.manual_seed(3)
    theirs = [batch for _ in range(2) for batch in client.train_dataloader()]
    assert torch.equal(our_state, torch.get_rng_state())
    assert len(ours) == len(theirs) == 2 * client.num_train_batches
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        for key in mine:
            assert torch.equal(mine[key], reference[key]), key


def test_a_client_with_a_batch_sampler_or_no_rows_is_not_batched_directly(digits, tmp_path) -> None:
    local = ClientTrainer(make_method(digits), digits, trainer_factory(tmp_path))
    assert not local.data_of(1, np.array([], dtype=np.int64)).direct_batching  # setup() refuses it, as before
    digits.train_batch_sampler_factory = PoissonSamplerFactory(seed=0)
    try:
        private = ClientTrainer(make_method(digits), digits, trainer_factory(tmp_path)).data_of(4, np.arange(10, 30))
    finally:
        digits.train_batch_sampler_factory = None
    assert not private.direct_batching


def test_a_flat_binding_loads_and_reads_the_state_as_set_flat_and_get_flat() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    layout = FlatLayout.of(model)
    weight = model[2].weight
    before = get_flat(model, layout)
    binding = FlatBinding.bind(model, layout)
    assert binding is not None and binding.intact() and model[2].weight is weight
    torch.testing.assert_close(binding.vector, before, rtol=0, atol=0)
    flat = torch.arange(layout.size, dtype=torch.float32)
    binding.load(flat)
    assert torch.equal(get_flat(model, layout), flat)
    with torch.no_grad():
        model[2].weight.mul_(2)
        model[1].running_mean.add_(1)
    assert torch.equal(binding.vector, get_flat(model, layout))
    with pytest.raises(ValueError, match="flat state has 3 values but the model has 30"):
        binding.load(torch.zeros(3))
    model[2].weight.data = model[2].weight.data.clone()  # e.g. moved to another device and back
    assert not binding.intact()


@pytest.mark.parametrize("change", ["new parameter", "new buffer", "deleted", "parameter set to None"])
def test_a_flat_binding_is_broken_by_replacing_or_removing_an_entry(change) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    binding = FlatBinding.bind(model, FlatLayout.of(model))
    assert binding is not None and binding.intact()
    if change == "new parameter":
        model[0].weight = nn.Parameter(model[0].weight.detach().clone())
    elif change == "new buffer":
        model[1].running_var = model[1].running_var.clone()
    elif change == "deleted":
        del model[0].bias
    else:
        model[0].bias = None
    assert not binding.intact()


def test_a_model_not_float32_is_not_bound_and_tied_weights_are_bound_once() -> None:
    double = nn.Linear(3, 2).double()
    assert FlatBinding.bind(double, FlatLayout.of(double)) is None
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    binding = FlatBinding.bind(tied, FlatLayout.of(tied))
    assert binding is not None and binding.vector.numel() == 9
    binding.load(torch.arange(9.0))
    assert torch.equal(tied[1].weight.detach().reshape(-1), torch.arange(9.0)) and tied[1].weight is tied[0].weight


def test_the_client_update_is_read_from_the_model_when_its_binding_broke(digits, tmp_path) -> None:
    method = make_method(digits)
    local = ClientTrainer(method, digits, trainer_factory(tmp_path))
    weights = get_flat(method.model, local.layout)
    rows = np.arange(0, 40)
    torch.manual_seed(0)
    reference = local.train(0, rows, weights).delta
    assert local.binding is not None and local.binding.intact()
    for parameter in method.model.parameters():  # what moving the model to a GPU and back does
        parameter.data = parameter.data.clone()
    torch.manual_seed(0)
    assert torch.equal(local.train(0, rows, weights).delta, reference)
    assert local.binding.intact()  # bound again when loading the next global model
    set_flat(method.model, local.layout, weights + 1)
    assert torch.equal(local.binding.vector, weights + 1)
