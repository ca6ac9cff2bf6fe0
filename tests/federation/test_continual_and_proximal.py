"""The continual setting's data windows, and FedProx's proximal term as a function and inside a fit."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from trustml.errors import ConfigError
from trustml.federation.continual import arrival_order, arrived_counts, client_windows, period_of_round
from trustml.federation.proximal import ProximalTerm, proximal_term


def test_arrivals_are_spread_over_periods_and_all_data_is_there_at_the_end() -> None:
    sizes = np.array([10, 3, 0, 7])
    assert arrived_counts(sizes, 0, 4).tolist() == [3, 1, 0, 2]
    assert arrived_counts(sizes, 1, 4).tolist() == [5, 2, 0, 4]
    assert arrived_counts(sizes, 3, 4).tolist() == [10, 3, 0, 7]


def test_windows_grow_over_time_and_the_storage_cap_drops_the_oldest() -> None:
    arrivals = [np.arange(100, 110), np.array([7, 3, 5])]
    uncapped = client_windows(arrivals, 1, 2, None)
    assert uncapped[0].tolist() == list(range(100, 110)) and uncapped[1].tolist() == [7, 3, 5]
    capped = client_windows(arrivals, 1, 2, storage_cap=2)
    assert capped[0].tolist() == [108, 109]
    assert capped[1].tolist() == [3, 5]
    first = client_windows(arrivals, 0, 2, storage_cap=2)
    assert first[0].tolist() == [103, 104] and first[1].tolist() == [7, 3]


def test_rounds_are_spread_evenly_over_periods() -> None:
    assert [period_of_round(r, 10, 5) for r in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [period_of_round(r, 3, 1) for r in range(3)] == [0, 0, 0]
    assert [period_of_round(r, 4, 8) for r in range(4)] == [0, 2, 4, 6]


def test_arrival_order_keeps_data_order_or_shuffles_within_each_client() -> None:
    partition = [np.array([1, 4, 9]), np.array([0, 2])]
    assert [a.tolist() for a in arrival_order(partition, "data", np.random.default_rng(0))] == [[1, 4, 9], [0, 2]]
    shuffled = arrival_order([np.arange(50)], "random", np.random.default_rng(0))[0]
    assert sorted(shuffled.tolist()) == list(range(50)) and shuffled.tolist() != list(range(50))
    with pytest.raises(ConfigError, match="arrival_order must be one of"):
        arrival_order(partition, "newest_first", np.random.default_rng(0))


def test_proximal_term_is_half_mu_times_squared_distance() -> None:
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    a = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    assert float(proximal_term(w, a, mu=0.5)) == pytest.approx(0.25 * (1 + 4 + 4))


def fit_one_step(module: pl.LightningModule, callbacks: list[pl.Callback]) -> None:
    """One optimizer step of a plain Lightning fit of ``module`` with ``callbacks``."""
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module)


class Linear(pl.LightningModule):
    """A one-layer model trained on fixed data with plain SGD (lr 1), for gradient checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.x, self.y = torch.randn(8, 3), torch.randn(8, 1)

    def training_step(self, batch, batch_idx):
        return ((self.layer(self.x) - self.y) ** 2).mean()

    def train_dataloader(self):
        return [0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_proximal_callback_gives_the_gradient_of_the_loss_plus_the_term() -> None:
    module = Linear()
    start = [p.detach().clone() for p in module.parameters()]
    # one step from a point away from the anchor: move the weights first, anchor = the start weights
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5)
    moved = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    loss = ((module.x @ moved[0].T + moved[1] - module.y) ** 2).mean() + proximal_term(moved, start, 3.0)
    expected_grads = torch.autograd.grad(loss, moved)

    captured: list[torch.Tensor] = []

    class Capture(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            captured.extend(p.grad.detach().clone() for p in pl_module.parameters())

    class FixedAnchor(ProximalTerm):
        def on_fit_start(self, trainer, pl_module):  # keep the anchor set above
            pass

    fixed = FixedAnchor(mu=3.0)
    fixed.anchors = start
    fit_one_step(module, [fixed, Capture()])
    for got, want in zip(captured, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_proximal_callback_anchors_at_the_weights_the_fit_starts_from() -> None:
    module = Linear()
    start = [p.detach().clone() for p in module.parameters()]
    callback = ProximalTerm(mu=1.0)
    fit_one_step(module, [callback])
    for anchor, s in zip(callback.anchors, start, strict=True):
        torch.testing.assert_close(anchor, s)
