"""Lightning callback that accounts a DP optimizer's privacy loss over a run (and across resumes)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from opacus.accountants import IAccountant

from trustml.errors import CheckpointError, ConfigError
from trustml.privacy.accounting import (
    accounted_steps,
    calibrate_noise_multiplier,
    make_accountant,
    spent_epsilon,
    steps_within_budget,
)
from trustml.privacy.compat import check_per_sample_compatible
from trustml.privacy.sampling import PoissonBatchSampler

log = logging.getLogger(__name__)

#: ``delta`` when none is configured, as a fraction of ``1 / N``.
DEFAULT_DELTA_FRACTION = 0.1


def _dp_optimizer(trainer: pl.Trainer) -> Any:
    for optimizer in trainer.optimizers:
        if hasattr(optimizer, "configure_noise") and hasattr(optimizer, "noisy_steps"):
            return optimizer
    raise ConfigError("PrivacyAccountantCallback needs a DP optimizer (optimizer=dp_sgd or optimizer=dp_adam)")


def _sampling(trainer: pl.Trainer) -> tuple[int, float]:
    """``(N, q)``: training-set size and per-step sampling rate of the training data loader."""
    loader = trainer.train_dataloader
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, PoissonBatchSampler):
        return batch_sampler.num_samples, batch_sampler.sample_rate
    num_samples, batch = len(loader.dataset), getattr(loader, "batch_size", None)
    if batch is None:
        raise ConfigError(
            "the training data loader has a custom batch sampler that is not trustml.privacy.PoissonBatchSampler, "
            "so its sampling rate is unknown; use PoissonBatchSampler for DP training"
        )
    log.warning(
        "DP training data is not Poisson-sampled; epsilon assumes Poisson sampling with rate batch_size/N = %d/%d. "
        "Use trustml.privacy.PoissonBatchSampler for the guarantee to hold.", batch, num_samples,
    )
    return num_samples, min(1.0, batch / num_samples)


def _planned_steps(trainer: pl.Trainer) -> int:
    """Steps of one fit: ``num_training_batches * max_epochs``, capped by ``max_steps``."""
    epochs = trainer.max_epochs
    per_epoch = trainer.num_training_batches
    if epochs is None or epochs < 0 or per_epoch == float("inf"):
        raise ConfigError(
            "optimizer.target_epsilon without optimizer.noise_multiplier calibrates the noise for the planned "
            "number of steps, which needs a finite trainer max_epochs and a sized training data loader"
        )
    steps = int(per_epoch) * epochs
    return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps


def _check_min_epochs_fit(trainer: pl.Trainer, steps_left: int) -> None:
    """Refuse a ``min_epochs`` that would force training past the privacy budget."""
    min_epochs = trainer.fit_loop.min_epochs or 0
    forced = (min_epochs - trainer.current_epoch) * trainer.num_training_batches
    if forced > steps_left:
        raise ConfigError(
            f"trainer.min_epochs={min_epochs} forces {int(forced)} more steps but the privacy budget "
            f"optimizer.target_epsilon affords only {steps_left}; set trainer.min_epochs=0 (or raise the budget)"
        )


class PrivacyAccountantCallback(pl.Callback):
    """Accounts every noisy step of the run's DP optimizer with an Opacus accountant.

    Before the first step it reads the sampling rate ``q`` from the training data loader, checks ``delta``,
    calibrates sigma for ``target_epsilon`` when no noise multiplier is set, and gives the optimizer sigma
    and the expected batch size ``qN``. It logs ``privacy/epsilon`` every epoch and stops training when one
    more step would exceed ``target_epsilon``. Its state (accountant history, sigma, delta) is saved in
    checkpoints; resuming from a checkpoint without it is refused, so a resume never resets the spent budget.
    Under a federation it runs inside every client's local training: example-level DP on each device, which
    accounts its own epsilon over all the rounds it takes part in (its state travels with the device between
    rounds). The federation sets :attr:`planned_fits`, the number of local fits (rounds) the device plans its
    budget for, so sigma is calibrated for ``planned_fits`` times one fit's steps; once the budget is spent
    ``final_results()`` reports ``budget_spent = 1`` and the federation selects the device no more.
    (Client-level DP, which protects a device's whole data set, is DP-FedAvg: ``federation.dp_noise_multiplier``.)
    """

    #: reads only what a federated client loop's fit view provides (trustml.federation.local_loop)
    client_loop_ready = True

    federated_scope = "client"

    def __init__(self) -> None:
        self.accountant: IAccountant | None = None
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.delta: float | None = None
        self.target_epsilon: float | None = None
        self.steps_left: int | None = None
        #: local fits whose steps the calibrated noise is planned for (1 for a centralized run)
        self.planned_fits = 1
        self._optimizer: Any = None
        self._counted = 0
        self._restored: dict[str, Any] | None = None

    # --- setup before the first step -----------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_per_sample_compatible(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = _dp_optimizer(trainer)
        num_samples, self.sample_rate = _sampling(trainer)
        self.delta = self._delta(optimizer.delta, num_samples)
        self.target_epsilon = optimizer.target_epsilon
        if self._restored is not None:
            self.accountant = make_accountant(self._restored["mechanism"])
            self.accountant.history = [tuple(entry) for entry in self._restored["history"]]
            self.noise_multiplier = self._restored["noise_multiplier"]
        else:
            self.accountant = make_accountant(optimizer.accountant)
            self.noise_multiplier = optimizer.noise_multiplier or calibrate_noise_multiplier(
                self.target_epsilon, self.delta, self.sample_rate, _planned_steps(trainer) * self.planned_fits,
                optimizer.accountant,
            )
            log.info("DP noise multiplier %.4f (sampling rate %.4g, delta %.3g, %d planned fit(s))",
                     self.noise_multiplier, self.sample_rate, self.delta, self.planned_fits)
        optimizer.configure_noise(self.noise_multiplier, expected_batch_size=self.sample_rate * num_samples)
        self._optimizer, self._counted = optimizer, optimizer.noisy_steps
        if self.target_epsilon is not None:
            self.steps_left = steps_within_budget(
                self.accountant.history, self.noise_multiplier, self.sample_rate, self.delta, self.target_epsilon,
                self.accountant.mechanism(),
            )
            if self.steps_left == 0 and accounted_steps(self.accountant) == 0:
                raise ConfigError(
                    f"optimizer.target_epsilon={self.target_epsilon} is too small for even one step with noise "
                    f"multiplier {self.noise_multiplier} at sampling rate {self.sample_rate:.4g} (delta "
                    f"{self.delta:.3g}); raise target_epsilon or noise_multiplier, or leave noise_multiplier unset "
                    f"to calibrate it"
                )
            _check_min_epochs_fit(trainer, self.steps_left)
            self._stop_if_spent(trainer)

    def _delta(self, configured: float | None, num_samples: int) -> float:
        if self._restored is not None:
            return float(self._restored["delta"])
        delta = configured if configured is not None else DEFAULT_DELTA_FRACTION / num_samples
        if delta >= 1.0 / num_samples:
            raise ConfigError(
                f"optimizer.delta={delta} is not below 1/N = {1.0 / num_samples:.3g} (N={num_samples} training "
                f"samples): such a delta allows releasing a whole sample. Use delta <= {0.1 / num_samples:.3g}"
            )
        return delta

    # --- accounting during training ------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        new_steps = self._optimizer.noisy_steps - self._counted
        for _ in range(new_steps):
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self._counted += new_steps
        if self.steps_left is not None:
            self.steps_left -= new_steps
            self._stop_if_spent(trainer)

    def _stop_if_spent(self, trainer: pl.Trainer) -> None:
        if self.steps_left is not None and self.steps_left <= 0:
            log.info("privacy budget epsilon=%s spent after %d steps; stopping", self.target_epsilon,
                     accounted_steps(self.accountant))
            trainer.should_stop = True
            self._optimizer.budget_spent = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw this epoch's Poisson batches from its own stream (Lightning sets no epoch on a batch sampler)."""
        batch_sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if isinstance(batch_sampler, PoissonBatchSampler):
            batch_sampler.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("privacy/epsilon", self.epsilon(), on_epoch=True, prog_bar=True)

    def epsilon(self) -> float:
        """epsilon spent so far at the run's delta."""
        return spent_epsilon(self.accountant, self.delta) if self.accountant is not None else 0.0

    @property
    def budget_spent(self) -> bool:
        """Whether ``target_epsilon`` affords no further step."""
        return self.steps_left is not None and self.steps_left <= 0

    def final_results(self) -> dict[str, float]:
        """Spent ``epsilon`` at ``delta``, the noise multiplier, sampling rate, number of noisy steps and whether
        the budget is spent (``budget_spent``: 1 or 0)."""
        if self.accountant is None:
            return {}
        return {
            "budget_spent": float(self.budget_spent),
            "epsilon": self.epsilon(),
            "delta": float(self.delta),
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sample_rate),
            "dp_steps": float(accounted_steps(self.accountant)),
        }

    # --- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.accountant is None:
            return dict(self._restored or {})
        return {
            "mechanism": self.accountant.mechanism(),
            "history": [list(entry) for entry in self.accountant.history],
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not checkpoint.get("callbacks", {}).get(self.state_key):
            raise CheckpointError(
                "the checkpoint has no privacy accountant state (it was not written by a DP run), so resuming would "
                "reset the spent privacy budget; resume DP training only from checkpoints of a DP run"
            )
