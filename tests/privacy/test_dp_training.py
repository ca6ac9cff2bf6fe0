"""End-to-end DP training through Lightning: ERM + MLP + DPSGD with Poisson batches and the accountant."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from opacus.accountants import RDPAccountant

from tests.privacy.privacy_helpers import BlobsDataModule
from trustml.errors import CheckpointError, ConfigError
from trustml.methods.erm import ERM, ERMConfig
from trustml.models.mlp import MLP, MLPConfig
from trustml.privacy.callback import PrivacyAccountantCallback
from trustml.privacy.options import DPSGDConfig
from trustml.privacy.plugins import DPSGD
from trustml.privacy.sampling import PoissonBatchSampler
from trustml.registry import build_plugin

STEPS_PER_EPOCH = 5  # 120 training samples, expected batch size 24: rate 0.2


def _fit(
    options: dict,
    max_epochs: int = 2,
    ckpt_path: Path | None = None,
    norm: str = "none",
    save_to: Path | None = None,
    private: bool = True,
    extra_callbacks: list[pl.Callback] | None = None,
    **trainer_options,
) -> tuple[pl.Trainer, PrivacyAccountantCallback | None, BlobsDataModule]:
    torch.manual_seed(0)
    datamodule = BlobsDataModule(n_train=120, batch_size=24)
    datamodule.setup("fit")
    model = MLP(MLPConfig(hidden_sizes=[16], dropout=0.0, norm=norm), num_classes=3, input_dim=5)
    if private:
        config = DPSGDConfig(**options)
        cfg = OmegaConf.create({"seed": 0, "optimizer": OmegaConf.structured(config)})
        callbacks = DPSGD.runtime_callbacks(cfg, datamodule)
        factory = DPSGD(config)
        datamodule = factory.training_data(datamodule, seed=0)
    else:
        callbacks, factory = [], partial(torch.optim.SGD, lr=0.1)
    method = ERM(ERMConfig(), model=model, optimizer=factory, num_classes=3)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[*callbacks, *(extra_callbacks or [])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        **trainer_options,
    )
    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return trainer, (callbacks[0] if callbacks else None), datamodule


def _opacus_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return accountant.get_epsilon(delta=delta)


def test_dp_fit_accounts_every_step_like_opacus_and_learns() -> None:
    trainer, accountant, _ = _fit({"lr": 0.5, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-4}, 3)

    assert isinstance(trainer.train_dataloader.batch_sampler, PoissonBatchSampler)
    results = accountant.final_results()
    assert results["dp_steps"] == 3 * STEPS_PER_EPOCH
    assert results["sample_rate"] == pytest.approx(0.2)
    assert results["delta"] == 1e-4
    assert results["epsilon"] == pytest.approx(_opacus_epsilon(1.0, 0.2, 15, 1e-4), rel=1e-9)
    assert float(trainer.callback_metrics["privacy/epsilon"]) == pytest.approx(results["epsilon"], rel=1e-6)
    assert float(trainer.callback_metrics["val/acc"]) > 0.6  # separable blobs are learned despite the noise


class BatchRecorder(pl.Callback):
    """Records the sample indices of every training batch, per epoch."""

    def __init__(self) -> None:
        self.epochs: list[list[list[int]]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, *args) -> None:
        self.epochs[-1].append(batch["index"].tolist())


def test_every_epoch_draws_fresh_poisson_batches_and_a_resumed_run_continues_the_stream(tmp_path: Path) -> None:
    # deterministic: batches from the run seed, so that the resumed run can be compared with the whole one
    options = {"lr": 0.5, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-4, "deterministic": True}
    whole = BatchRecorder()
    _fit(options, 3, extra_callbacks=[whole])
    assert len(whole.epochs) == 3 and whole.epochs[0] != whole.epochs[1] != whole.epochs[2] != whole.epochs[0]

    _fit(options, 2, save_to=tmp_path / "two.ckpt")
    resumed = BatchRecorder()
    _fit(options, 3, ckpt_path=tmp_path / "two.ckpt", extra_callbacks=[resumed])
    assert resumed.epochs == [whole.epochs[2]]  # epoch 2's batches, not a replay of epoch 0's


def test_batches_and_noise_are_secret_by_default_and_follow_the_seed_when_deterministic() -> None:
    options = {"lr": 0.5, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-4}
    runs = {}
    for deterministic in (False, True):
        recorders = [BatchRecorder(), BatchRecorder()]
        trainers = [_fit({**options, "deterministic": deterministic}, 1, extra_callbacks=[r])[0] for r in recorders]
        weights = [torch.cat([p.detach().flatten() for p in t.lightning_module.parameters()]) for t in trainers]
        runs[deterministic] = (recorders[0].epochs == recorders[1].epochs, torch.equal(*weights))
    assert runs[False] == (False, False)  # same run seed, other batches and noise: nothing recorded gives them
    assert runs[True] == (True, True)  # optimizer.deterministic=true: the run seed reproduces the run


def test_target_epsilon_calibrates_the_noise_to_spend_the_budget() -> None:
    trainer, accountant, _ = _fit({"lr": 0.5, "target_epsilon": 4.0}, max_epochs=2)

    results = accountant.final_results()
    assert results["dp_steps"] == 2 * STEPS_PER_EPOCH
    assert results["delta"] == pytest.approx(0.1 / 120)
    assert 4.0 - 0.05 <= results["epsilon"] <= 4.0
    assert trainer.current_epoch == 2


def test_training_stops_when_the_budget_is_spent() -> None:
    budget = _opacus_epsilon(1.0, 0.2, 7, 1e-3) + 1e-6  # affords 7 of the 15 planned steps
    trainer, accountant, _ = _fit({"noise_multiplier": 1.0, "target_epsilon": budget, "delta": 1e-3}, max_epochs=3)

    assert accountant.final_results()["dp_steps"] == 7
    assert accountant.final_results()["epsilon"] <= budget
    assert trainer.optimizers[0].budget_spent


def test_resuming_keeps_the_spent_budget(tmp_path: Path) -> None:
    options = {"lr": 0.5, "noise_multiplier": 1.3, "delta": 1e-4}
    _, first, _ = _fit(options, max_epochs=2, save_to=tmp_path / "dp.ckpt")
    assert first.final_results()["dp_steps"] == 10

    _, resumed, _ = _fit(options, max_epochs=3, ckpt_path=tmp_path / "dp.ckpt")

    results = resumed.final_results()
    assert results["dp_steps"] == 15
    assert results["epsilon"] == pytest.approx(_opacus_epsilon(1.3, 0.2, 15, 1e-4), rel=1e-9)


def test_resuming_a_calibrated_run_keeps_its_noise(tmp_path: Path) -> None:
    _, first, _ = _fit({"target_epsilon": 3.0}, max_epochs=1, save_to=tmp_path / "dp.ckpt")
    _, resumed, _ = _fit({"target_epsilon": 3.0}, max_epochs=2, ckpt_path=tmp_path / "dp.ckpt")
    # the first run's noise, calibrated for 5 steps, cannot pay for 10: training stops at the budget
    assert resumed.noise_multiplier == first.noise_multiplier
    assert resumed.final_results()["epsilon"] <= 3.0
    assert resumed.final_results()["dp_steps"] < 10


def test_resuming_from_a_non_private_checkpoint_is_refused(tmp_path: Path) -> None:
    _fit({}, max_epochs=1, private=False, save_to=tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="reset the spent privacy budget"):
        _fit({"noise_multiplier": 1.0}, max_epochs=2, ckpt_path=tmp_path / "plain.ckpt")


def test_delta_not_below_one_over_n_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"delta=0.01 is not below 1/N .*N=120"):
        _fit({"noise_multiplier": 1.0, "delta": 0.01}, max_epochs=1)


def test_a_budget_too_small_for_one_step_is_refused() -> None:
    with pytest.raises(ConfigError, match="too small for even one step"):
        _fit({"noise_multiplier": 0.5, "target_epsilon": 0.05, "delta": 1e-4}, max_epochs=1)


def test_batchnorm_model_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match="BatchNorm1d.*GroupNorm or LayerNorm"):
        _fit({"noise_multiplier": 1.0}, max_epochs=1, norm="batch")


def test_min_epochs_beyond_the_budget_is_refused() -> None:
    budget = _opacus_epsilon(1.0, 0.2, 3, 1e-3) + 1e-6  # 3 steps, but one forced epoch has 5
    with pytest.raises(ConfigError, match=r"trainer.min_epochs=1 forces 5 more steps .* affords only 3"):
        _fit({"noise_multiplier": 1.0, "target_epsilon": budget, "delta": 1e-3}, max_epochs=2, min_epochs=1)


@pytest.mark.parametrize("optimizer", ["dp_sgd", "dp_adam"])
def test_the_composed_deterministic_option_decides_where_the_sampler_seeds_come_from(optimizer, tmp_path) -> None:
    from tests.conftest import compose_train

    for overrides, expected_seed in (([], None), (["optimizer.deterministic=true", "seed=17"], 17)):
        cfg = compose_train([f"optimizer={optimizer}", *overrides], tmp_path)
        datamodule = BlobsDataModule()
        plugin = build_plugin("optimizer", cfg.optimizer)
        sampled = plugin.training_data(datamodule, seed=int(cfg.seed))
        assert sampled.train_batch_sampler_factory.seed == expected_seed
        assert datamodule.train_batch_sampler_factory is None  # a view: the data module itself is unchanged
        assert sampled.splits is datamodule.splits
