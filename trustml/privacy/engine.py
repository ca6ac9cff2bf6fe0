"""The privacy engine: plans DP-SGD's noise before the optimizer is built, and accounts its steps.

As Opacus' ``make_private_with_epsilon`` does, the noise multiplier is a function of what is known before
training: the training-set size ``N``, the expected batch size (hence the Poisson rate ``q = L / N``), the
planned number of steps and, with ``target_epsilon``, the budget (:func:`plan_noise`). A
:class:`PrivateFit` holds one fit's plan and its :class:`~trustml.privacy.accounting.GaussianAccountant`
(restored from a checkpoint or an earlier federated round, so that the budget composes over them); the DP
optimizer plugin builds its optimizer from the plan and :meth:`PrivateFit.attach` accounts every noisy update
from a step hook (``Optimizer.register_step_post_hook``), marking the optimizer ``budget_spent`` once one
more step would exceed ``target_epsilon``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from trustml.errors import ConfigError
from trustml.privacy.accounting import GaussianAccountant, calibrate_noise_multiplier
from trustml.privacy.options import DPOptimizerConfig

log = logging.getLogger(__name__)

#: ``delta`` when none is configured, as a fraction of ``1 / N``.
DEFAULT_DELTA_FRACTION = 0.1


@dataclass(frozen=True)
class NoisePlan:
    """What a DP optimizer needs before its first step: sigma and the expected logical batch size ``L = qN``.

    ``L`` is the denominator of the noisy mean; it must not depend on the realised (private) batch size.
    ``processes``: the data-parallel processes that share each step (DDP): each sums its shard's clipped
    gradients, process 0 alone adds the noise and the sums are all-reduced (:mod:`trustml.privacy.distributed`);
    ``L`` is then the expected size of the global batch.
    """

    noise_multiplier: float
    expected_batch_size: float
    processes: int = 1

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ConfigError(f"noise multiplier must be positive, got {self.noise_multiplier}")
        if self.expected_batch_size is None or not self.expected_batch_size > 0:
            raise ConfigError(
                f"the expected batch size must be positive (sampling rate q times the N training samples), got "
                f"{self.expected_batch_size}"
            )
        if self.processes < 1:
            raise ConfigError(f"a DP step needs at least one training process, got {self.processes}")


@dataclass(frozen=True)
class FitSampling:
    """How one fit samples its training data: ``num_samples`` (N), Poisson rate ``sample_rate`` (q), the
    number of noisy steps it plans (``planned_steps``: every fit the budget is planned for, not only this one) and
    the data-parallel ``processes`` that draw each step's Poisson sample together (each its shard of the N
    samples at rate q; ``N`` and ``q`` are those of the whole training set, as the accountant counts them)."""

    num_samples: int
    sample_rate: float
    planned_steps: int
    processes: int = 1


def default_delta(configured: float | None, num_samples: int) -> float:
    """``delta``: the configured one or ``0.1 / N``; refused unless below ``1 / N``."""
    delta = configured if configured is not None else DEFAULT_DELTA_FRACTION / num_samples
    if delta >= 1.0 / num_samples:
        raise ConfigError(
            f"optimizer.delta={delta} is not below 1/N = {1.0 / num_samples:.3g} (N={num_samples} training "
            f"samples): such a delta allows releasing a whole sample. Use delta <= {0.1 / num_samples:.3g}"
        )
    return delta


def plan_noise(options: DPOptimizerConfig, sampling: FitSampling, delta: float) -> float:
    """The noise multiplier: ``options.noise_multiplier``, or the smallest sigma for which the planned steps at
    rate ``q`` spend at most ``options.target_epsilon`` at ``delta``."""
    if options.noise_multiplier is not None:
        return float(options.noise_multiplier)
    if sampling.planned_steps <= 0:
        raise ConfigError(
            "optimizer.target_epsilon without optimizer.noise_multiplier calibrates the noise for the planned "
            "number of steps, which needs a finite trainer max_epochs and a sized training data loader"
        )
    return calibrate_noise_multiplier(
        options.target_epsilon, delta, sampling.sample_rate, sampling.planned_steps, options.accountant
    )


class PrivateFit:
    """One fit of a DP optimizer: its noise plan, its accountant and its remaining budget.

    ``restored`` (a :meth:`state_dict` of the device's or checkpoint's earlier fits) keeps their accountant
    history, noise multiplier and delta, so a resumed or later fit continues the same budget.
    """

    def __init__(
        self, options: DPOptimizerConfig, sampling: FitSampling, restored: dict[str, Any] | None = None
    ) -> None:
        self.sampling = sampling
        self.target_epsilon = options.target_epsilon
        if restored:
            self.delta = float(restored["delta"])
            self.accountant = GaussianAccountant(restored["noise_multiplier"], self.delta, restored["mechanism"])
            self.accountant.load_state_dict(restored)
        else:
            self.delta = default_delta(options.delta, sampling.num_samples)
            sigma = plan_noise(options, sampling, self.delta)
            self.accountant = GaussianAccountant(sigma, self.delta, options.accountant)
            log.info(
                "DP noise multiplier %.4f (sampling rate %.4g, delta %.3g, %d planned steps)",
                sigma,
                sampling.sample_rate,
                self.delta,
                sampling.planned_steps,
            )
        self.steps_left: int | None = None
        if self.target_epsilon is not None:
            self.steps_left = self.accountant.steps_within(self.target_epsilon, sampling.sample_rate)
            if self.steps_left == 0 and self.accountant.steps() == 0:
                raise ConfigError(
                    f"optimizer.target_epsilon={self.target_epsilon} is too small for even one step with noise "
                    f"multiplier {self.noise_multiplier} at sampling rate {sampling.sample_rate:.4g} (delta "
                    f"{self.delta:.3g}); raise target_epsilon or noise_multiplier, or leave noise_multiplier unset "
                    f"to calibrate it"
                )
        self._counted = 0

    @property
    def noise_multiplier(self) -> float:
        """Sigma of every step of this fit."""
        return self.accountant.noise_multiplier

    @property
    def plan(self) -> NoisePlan:
        """The noise plan the fit's optimizer is built with."""
        sampling = self.sampling
        return NoisePlan(self.noise_multiplier, sampling.sample_rate * sampling.num_samples, sampling.processes)

    @property
    def budget_spent(self) -> bool:
        """Whether ``target_epsilon`` affords no further step."""
        return self.steps_left is not None and self.steps_left <= 0

    def attach(self, optimizer: Any) -> None:
        """Account every noisy update of ``optimizer`` (a DP optimizer) from a step post-hook."""
        self._counted = optimizer.noisy_steps
        optimizer.budget_spent = self.budget_spent
        optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        new_steps = optimizer.noisy_steps - self._counted  # type: ignore[attr-defined]
        for _ in range(new_steps):
            self.accountant.step(self.sampling.sample_rate)
        self._counted += new_steps
        if self.steps_left is not None:
            self.steps_left -= new_steps
            if self.budget_spent:
                log.info(
                    "privacy budget epsilon=%s spent after %d steps; stopping",
                    self.target_epsilon,
                    self.accountant.steps(),
                )
                optimizer.budget_spent = True  # type: ignore[attr-defined]

    def epsilon(self) -> float:
        """epsilon spent so far at the fit's delta."""
        return self.accountant.epsilon()

    def final_results(self) -> dict[str, float]:
        """Spent ``epsilon`` at ``delta``, the noise multiplier, sampling rate, number of noisy steps and whether
        the budget is spent (``budget_spent``: 1 or 0)."""
        return {
            "budget_spent": float(self.budget_spent),
            "epsilon": self.epsilon(),
            "delta": float(self.delta),
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sampling.sample_rate),
            "dp_steps": float(self.accountant.steps()),
        }

    def state_dict(self) -> dict[str, Any]:
        """Accountant history, mechanism, noise multiplier and delta: what a later fit continues from."""
        return {
            "mechanism": self.accountant.mechanism,
            "history": [list(entry) for entry in self.accountant.history],
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
        }
