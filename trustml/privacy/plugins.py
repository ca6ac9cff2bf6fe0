"""The DP optimizer plugins ``optimizer=dp_sgd`` and ``optimizer=dp_adam`` (example-level DP).

Built as ``DPSGD(config)``; ``build(params)`` gives the torch optimizer
(:class:`~trustml.privacy.optimizers.DPSGDOptimizer`), built with the noise plan of the fit it is for: the fit's
:class:`~trustml.privacy.callback.PrivacyAccountantCallback` (from :meth:`DPOptimizerPlugin.runtime_callbacks`)
hands the plugin a planner before the optimizer is built (:meth:`DPOptimizerPlugin.expect_fit`). Heavy modules
(torch, Opacus) are imported when an optimizer is built, not when the plugin is registered.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from trustml.errors import ConfigError
from trustml.plugin import OptimizerPlugin
from trustml.privacy.options import (
    FULL_PRECISION,
    MIXED_PRECISION_REFUSAL,
    DPAdamConfig,
    DPOptimizerConfig,
    DPSGDConfig,
)
from trustml.registry import register

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

    from trustml.privacy.engine import PrivateFit
    from trustml.privacy.optimizers import DPOptimizer


class DPOptimizerPlugin(OptimizerPlugin):
    """A DP optimizer plugin: per-sample gradients, noise planned by the privacy engine before it is built."""

    needs_per_sample_gradients: ClassVar[bool] = True

    def __init__(self, config: DPOptimizerConfig) -> None:
        self.config = config
        self._planner: Callable[[DPOptimizerConfig], PrivateFit] | None = None

    def expect_fit(self, planner: Callable[[DPOptimizerConfig], PrivateFit]) -> None:
        """The next :meth:`build` is for the fit ``planner`` plans (called by the fit's accountant callback)."""
        self._planner = planner

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The DP optimizer of ``params``, with the noise the expected fit's plan gives and its accountant attached.

        Without an expected fit (no accountant callback, e.g. a probe) the optimizer has no plan and refuses to step.
        """
        planner, self._planner = self._planner, None
        if planner is None:
            return self.optimizer(params, None)
        fit = planner(self.config)
        optimizer = self.optimizer(params, fit.plan)
        fit.attach(optimizer)
        return optimizer

    @abstractmethod
    def optimizer(self, params: Iterable[torch.nn.Parameter], plan: Any) -> DPOptimizer:
        """The torch DP optimizer of ``params`` with this plugin's options and ``plan``."""

    def training_data(self, datamodule: Any, seed: int) -> Any:
        """A view of ``datamodule`` whose training batches are Poisson-sampled (``datamodule`` is left as it is).

        A data module with ``with_train_batch_sampler`` (``TrustDataModule``) gets
        :class:`~trustml.privacy.sampling.PoissonBatchSampler` batches (expected batch size ``data.batch_size``):
        secret seeds from OS entropy, or seeds drawn from the run ``seed`` with ``optimizer.deterministic=true``.
        """
        from trustml.privacy.sampling import PoissonSamplerFactory

        if not hasattr(datamodule, "with_train_batch_sampler"):
            return datamodule
        return datamodule.with_train_batch_sampler(PoissonSamplerFactory(seed if self.config.deterministic else None))

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse DP training on several processes (``trainer.strategy=ddp``, ``trainer.devices>1``, several nodes).

        Under Lightning's DDP every process would draw its own Poisson batches from its shard of the data (the
        sampling rate the accountant counts would be wrong) and add its own noise before gradients are averaged
        (noise once per process, not once per step): the epsilon reported would not be the guarantee. DP training
        runs on one device; see :func:`multi_process_reason`.
        """
        trainer = cfg.get("trainer") or {}
        precision = trainer.get("precision", None)
        if precision not in FULL_PRECISION:
            raise ConfigError(MIXED_PRECISION_REFUSAL.format(where=f"trainer.precision={precision}"))
        reason = multi_process_reason(trainer)
        if reason:
            raise ConfigError(
                f"optimizer={cls.__name__} does not support training on several processes ({reason}): each "
                "process would Poisson-sample only its own shard of the data "
                "and add its own noise, so the accountant's sampling rate and noise would not be those of the update. "
                "Train DP models on one device (trainer.devices=1 and no trainer.strategy/num_nodes); for a bigger "
                "logical batch raise data.batch_size and bound memory with optimizer.max_physical_batch_size"
            )

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[Any]:
        """The privacy accountant (noise plan, per-epoch epsilon, budget stop, checkpointed state), which plans
        for the sampling rate of the training data :meth:`training_data` gave."""
        from trustml.privacy.callback import PrivacyAccountantCallback

        return [PrivacyAccountantCallback()]


SINGLE_PROCESS_STRATEGIES = ("auto", "single_device", None)


def multi_process_reason(trainer: Any) -> str | None:
    """Which ``trainer.*`` setting asks for more than one training process, or ``None``."""
    strategy = trainer.get("strategy", "auto")
    if not (strategy is None or isinstance(strategy, str)) or strategy not in SINGLE_PROCESS_STRATEGIES:
        return f"trainer.strategy={strategy}"
    nodes = trainer.get("num_nodes", 1)
    if nodes not in (1, "1"):
        return f"trainer.num_nodes={nodes}"
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices in (0, 1):
        return None
    if devices == "auto" and trainer.get("accelerator", "auto") == "cpu":
        return None
    if not isinstance(devices, int | str) and len(devices) == 1:  # a list of one device id
        return None
    return f"trainer.devices={devices}"


@register("optimizer", "dp_sgd", dataclass=DPSGDConfig)
class DPSGD(DPOptimizerPlugin):
    """DP-SGD: SGD on clipped, noised per-sample gradients (example-level DP; per device in a federation)."""

    def optimizer(self, params: Iterable[torch.nn.Parameter], plan: Any) -> DPOptimizer:
        from trustml.privacy.optimizers import DPSGDOptimizer

        return DPSGDOptimizer(params, self.config, plan)


@register("optimizer", "dp_adam", dataclass=DPAdamConfig)
class DPAdam(DPOptimizerPlugin):
    """DP-Adam: Adam on clipped, noised per-sample gradients (example-level DP; per device in a federation)."""

    def optimizer(self, params: Iterable[torch.nn.Parameter], plan: Any) -> DPOptimizer:
        from trustml.privacy.optimizers import DPAdamOptimizer

        return DPAdamOptimizer(params, self.config, plan)
