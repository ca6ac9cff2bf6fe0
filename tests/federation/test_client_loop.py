"""The Trainer-free client loop gives the client update a Lightning fit gives, or names why it cannot."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.federation.conftest import ClientPrivacyAccountant, dp_sgd, make_method, poisson_digits, trainer_factory
from tests.pc.conftest import BlobsDataModule, mlp_config, train_mlp, write_run
from trustml.data.base import TrustDataModule
from trustml.federation.client import ClientDidNotTrain, ClientTimeout, ClientTrainer, ClientUpdate
from trustml.federation.flat_state import FlatLayout, get_flat
from trustml.federation.local_loop import loop_refusal
from trustml.federation.options import ClientConfig
from trustml.methods.base import ClassificationMethod
from trustml.methods.erm import ERM, ERMConfig
from trustml.methods.pc import PCConfig, PositiveCongruentTraining
from trustml.models.mlp import MLP, MLPConfig

ROWS = np.arange(3, 123, 3)  # 40 rows: 3 batches of 16 per epoch


def two_rounds(
    datamodule: TrustDataModule,
    new_method: Callable[[], pl.LightningModule],
    client_loop: str,
    root: Path,
    rows: Sequence[np.ndarray] = (ROWS, ROWS),
    callbacks: Sequence[pl.Callback] = (),
    **options: Any,
) -> tuple[ClientTrainer, list[ClientUpdate]]:
    """One client's updates in two consecutive rounds (the second from the first's weights and callback state)."""
    method = new_method()
    layout = FlatLayout.of(method.model)
    weights = get_flat(method.model, layout)
    proximal_mu, planned_fits = options.pop("proximal_mu", 0.0), options.pop("planned_fits", None)
    local = ClientTrainer(
        method,
        datamodule,
        trainer_factory(root),
        ClientConfig(loop=client_loop, **options),
        proximal_mu=proximal_mu,
        callback_templates=list(callbacks),
        planned_fits=planned_fits,
    )
    torch.manual_seed(5)
    updates: list[ClientUpdate] = []
    for client_rows in rows:
        update = local.train(0, client_rows, weights, updates[-1].callback_states if updates else ())
        updates.append(update)
        weights = weights + update.delta
    return local, updates


def assert_same_updates(loop: list[ClientUpdate], lightning: list[ClientUpdate], rounding: float = 0.0) -> None:
    """The same updates bit for bit (the same operations on the same batches); the same metrics and states.

    ``rounding`` > 0 allows that relative difference (and an absolute one of ``rounding`` / 10) where the two
    fits compute some inputs of the loss in batches of different shapes (see the PC test)."""
    for ours, theirs in zip(loop, lightning, strict=True):
        if rounding:
            assert torch.allclose(ours.delta, theirs.delta, rtol=rounding, atol=rounding / 10)
        else:
            assert torch.equal(ours.delta, theirs.delta), (ours.delta - theirs.delta).abs().max()
        assert ours.num_examples == theirs.num_examples
        assert ours.metrics.keys() == theirs.metrics.keys()
        for key in ours.metrics.keys() - {"seconds"}:
            assert ours.metrics[key] == pytest.approx(theirs.metrics[key], rel=max(rounding, 1e-6)), key
        assert ours.callback_states == theirs.callback_states


def sgd(
    datamodule: TrustDataModule, momentum: float = 0.0, optimizer: Callable[..., Any] | None = None
) -> Callable[[], ERM]:
    def new_method() -> ERM:
        return make_method(datamodule, optimizer=optimizer or partial(torch.optim.SGD, lr=0.1, momentum=momentum))

    return new_method


ADAMW = partial(torch.optim.AdamW, lr=1e-2)


@pytest.mark.parametrize(
    ("momentum", "options"),
    [
        (0.0, {"local_epochs": 2}),
        (0.9, {"local_steps": 5}),  # a step budget that ends inside the second epoch
        (0.0, {"local_epochs": 2, "proximal_mu": 0.5}),  # FedProx
        (0.0, {"local_epochs": 2, "optimizer": ADAMW}),  # the second round's reused AdamW starts from no state
    ],
    ids=["erm_sgd", "erm_momentum_local_steps", "fedprox", "adamw"],
)
def test_the_client_loop_gives_the_update_of_a_lightning_fit(digits, tmp_path, momentum, options) -> None:
    options = dict(options)
    optimizer = options.pop("optimizer", None)
    local, loop = two_rounds(digits, sgd(digits, momentum, optimizer), "auto", tmp_path, **options)
    assert local.loop is not None, "the loop must be the one under test"
    assert local.loop.reusable is not None, "the second round must reuse the first round's optimizer"
    _, lightning = two_rounds(digits, sgd(digits, momentum, optimizer), "lightning", tmp_path, **options)
    assert_same_updates(loop, lightning)
    assert loop[0].delta.abs().sum() > 0


@pytest.mark.parametrize(
    "dp_options",
    [{"noise_multiplier": 1.0, "target_epsilon": None}, {"noise_multiplier": None, "target_epsilon": 3.0}],
    ids=["fixed_sigma", "calibrated_for_target_epsilon"],
)
def test_dp_sgd_in_the_client_loop_gives_the_lightning_update_and_privacy_accounting(tmp_path, dp_options) -> None:
    datamodule = poisson_digits(batch_size=16)

    def new_method() -> ERM:
        return make_method(datamodule, optimizer=dp_sgd(lr=0.1, max_grad_norm=1.0, noise_seed=0, **dp_options))

    # the client plans its budget for its two fits (the federation's planned_rounds give this per client)
    options = {"local_epochs": 2, "callbacks": [ClientPrivacyAccountant()], "planned_fits": np.array([2])}
    local, loop = two_rounds(datamodule, new_method, "auto", tmp_path, **options)
    assert local.loop is not None
    _, lightning = two_rounds(datamodule, new_method, "lightning", tmp_path, **options)
    assert_same_updates(loop, lightning)
    first, second = (update.metrics for update in loop)
    # the client's epsilon composes over its rounds; both rounds train
    assert second["dp_steps"] == 2 * first["dp_steps"] > 0 and second["epsilon"] > first["epsilon"] > 0
    assert loop[1].delta.abs().sum() > 0
    if dp_options["target_epsilon"] is not None:  # sigma calibrated so that the two planned fits spend epsilon 3
        assert first["budget_spent"] == 0.0 and second["budget_spent"] == 1.0
        assert 2.9 <= second["epsilon"] <= 3.0
        # a third fit would take no step: it is refused instead of returning an update that carries no training
        with pytest.raises(ClientDidNotTrain, match="privacy budget"):
            local.train(0, ROWS, get_flat(local.method.model, local.layout), loop[1].callback_states)


def test_pc_prepares_in_a_first_lightning_fit_then_trains_in_the_loop_on_cached_old_logits(tmp_path) -> None:
    old_dir = write_run(tmp_path / "old", train_mlp((8,), 3, seed=0), mlp_config((8,)), 3, ["c0", "c1", "c2"])
    blobs = BlobsDataModule(batch_size=16)
    blobs.setup("fit")

    def new_method() -> PositiveCongruentTraining:
        torch.manual_seed(1)
        model = MLP(MLPConfig(hidden_sizes=[16], dropout=0.0), num_classes=3, input_dim=8)
        # lr 0.01: the focal-distillation loss (KL at temperature 100, times 100^2) is large, and at lr 0.1 the
        # second round diverges (train loss ~2e14), where the comparison would test float rounding, not logic
        config = PCConfig(old_run_dirs=[str(old_dir)], objective="focal_distillation")
        return PositiveCongruentTraining(
            config, model=model, optimizer=partial(torch.optim.SGD, lr=0.01), num_classes=3
        )

    clients = [np.arange(0, 40), np.arange(40, 90)]  # the second client's rows are not cached by the first fit
    local, loop = two_rounds(blobs, new_method, "auto", tmp_path / "a", rows=clients, local_epochs=2)
    assert local.prepared and local.loop is not None
    assert local.method.old_logits.known[40:90].all()  # filled on the fly by the loop's prepare_batch
    _, lightning = two_rounds(blobs, new_method, "lightning", tmp_path / "b", rows=clients, local_epochs=2)
    # Not bit for bit: the second client's old logits come from the old model run on its training batches (16
    # rows) in the loop, on the whole client split (50 rows, on_fit_start's cache fill) in the Lightning fit, and a
    # row's float rounding in a matrix product can depend on the batch's shape (seen on some CPUs: 2.7e-7 apart)
    assert_same_updates(loop, lightning, rounding=1e-4)
    # a sane, learning run: finite updates, and the second round's loss below the first's
    first, second = (update.metrics["train_loss"] for update in loop)
    assert all(torch.isfinite(update.delta).all() and update.delta.abs().sum() > 0 for update in loop)
    assert math.isfinite(first) and 0 < second < 0.6 * first < 100, (first, second)


class OwnStep(ERM):
    """A method with its own ``training_step`` (as BCT has): only a Lightning fit runs it."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx)


class NeedsTrainer(pl.Callback):
    """A client callback that has not declared it works on the loop's fit view."""

    federated_scope = "client"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("method", r"OwnStep overrides \['training_step'\]"),
        ("accumulate", r"trainer.accumulate_grad_batches=2"),
        ("clip", r"trainer.gradient_clip_val=1.0"),
        ("callback", r"client callbacks \['NeedsTrainer'\] need a Trainer"),
    ],
)
def test_a_fit_the_loop_cannot_stand_in_for_runs_in_lightning_and_says_why(
    digits, tmp_path, change, reason, caplog
) -> None:
    base = make_method(digits)
    method: ClassificationMethod = (
        OwnStep(ERMConfig(), model=base.model, optimizer=base.optimizer_factory, num_classes=10)
        if change == "method"
        else base
    )
    configured = {"accumulate": {"accumulate_grad_batches": 2}, "clip": {"gradient_clip_val": 1.0}}.get(change, {})
    factory = trainer_factory(tmp_path)
    callbacks = [NeedsTrainer()] if change == "callback" else []
    with caplog.at_level("INFO", logger="trustml.federation.client"):
        local = ClientTrainer(
            method, digits, lambda **overrides: factory(**overrides, **configured), callback_templates=callbacks
        )
        update = local.train(0, ROWS, get_flat(method.model, local.layout))
    assert local.loop is None and update.delta.abs().sum() > 0
    assert "each client fit builds a Lightning Trainer" in caplog.text
    assert re.search(reason, caplog.text), caplog.text


def test_the_plain_case_needs_no_lightning(digits, tmp_path) -> None:
    method = make_method(digits)
    client_fit = ClientTrainer(method, digits, trainer_factory(tmp_path)).trainer_overrides([])
    assert loop_refusal(method, trainer_factory(tmp_path)(**client_fit), []) is None


class StopAfterFirstBatch(pl.Callback):
    """A loop-ready client callback that asks to stop after one batch, as the DP accountant does at its budget."""

    federated_scope = "client"
    client_loop_ready = True

    def __init__(self) -> None:
        self.hooks: list[str] = []

    def on_train_start(self, trainer: Any, pl_module: pl.LightningModule) -> None:
        self.hooks.append("on_train_start")

    def on_train_batch_end(self, trainer: Any, pl_module: pl.LightningModule, *args: Any) -> None:
        self.hooks.append("on_train_batch_end")
        trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: pl.LightningModule) -> None:
        self.hooks.append("on_train_end")


def test_a_callback_stops_the_loop_as_it_stops_a_lightning_fit(digits, tmp_path) -> None:
    template = StopAfterFirstBatch()
    _, loop = two_rounds(digits, sgd(digits), "auto", tmp_path, rows=[ROWS], callbacks=[template], local_epochs=3)
    _, lightning = two_rounds(
        digits, sgd(digits), "lightning", tmp_path, rows=[ROWS], callbacks=[template], local_epochs=3
    )
    assert_same_updates(loop, lightning)


def test_a_slow_client_in_the_loop_stops_and_times_out(digits, tmp_path) -> None:
    class Slow(StopAfterFirstBatch):
        def on_train_batch_end(self, trainer: Any, pl_module: pl.LightningModule, *args: Any) -> None:
            time.sleep(0.3)

    method = make_method(digits)
    local = ClientTrainer(
        method,
        digits,
        trainer_factory(tmp_path),
        ClientConfig(timeout_s=0.2, local_epochs=50),
        callback_templates=[Slow()],
    )
    with pytest.raises(ClientTimeout, match="federation.client.timeout_s=0.2"):
        local.train(3, ROWS, get_flat(method.model, local.layout))
    assert local.loop is not None
