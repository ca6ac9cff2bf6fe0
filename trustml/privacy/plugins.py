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
        #: with ``deterministic=true``: the stream the noise seed of every optimizer built is drawn from (run seed)
        self._noise_seeds: torch.Generator | None = None

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
        if self._noise_seeds is not None and self.config.noise_seed is None:
            import torch

            # before its first step (its generators are made then): a noise seed that depends on the run seed
            # only, not on how much of torch's global generator the trainer used (Lightning's DDP reseeds it)
            optimizer.noise_seed = int(torch.randint(0, 2**62, (), generator=self._noise_seeds))
        fit.attach(optimizer)
        return optimizer

    @abstractmethod
    def optimizer(self, params: Iterable[torch.nn.Parameter], plan: Any) -> DPOptimizer:
        """The torch DP optimizer of ``params`` with this plugin's options and ``plan``."""

    def training_data(self, datamodule: Any, seed: int) -> Any:
        """A view of ``datamodule`` whose training batches are Poisson-sampled (``datamodule`` is left as it is).

        A data module with ``with_train_batch_sampler`` (``TrustDataModule``) gets
        :class:`~trustml.privacy.sampling.PoissonBatchSampler` batches (expected batch size ``data.batch_size``):
        secret seeds from OS entropy, or seeds drawn from the run ``seed`` with ``optimizer.deterministic=true``
        (then the noise seeds of the optimizers this plugin builds are drawn from the run ``seed`` too, from a
        stream of their own: the same on every DDP process and in a one-process run of the same seed).
        """
        from trustml.privacy.sampling import PoissonSamplerFactory

        if self.config.deterministic:
            import torch

            self._noise_seeds = torch.Generator().manual_seed(seed + NOISE_SEED_STREAM)
        if not hasattr(datamodule, "with_train_batch_sampler"):
            return datamodule
        return datamodule.with_train_batch_sampler(PoissonSamplerFactory(seed if self.config.deterministic else None))

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Refuse mixed precision, and training on several processes other than DP-correct DDP.

        On several processes (``trainer.strategy=ddp``, ``trainer.devices>1``, several nodes) every process
        Poisson-samples its shard of the training set at the global rate and process 0 alone adds the noise to the
        all-reduced sum of clipped gradients (:mod:`trustml.privacy.distributed`), so the accounting is that of one
        process. That needs ``trainer.use_distributed_sampler=false`` (Lightning's ``DistributedSampler`` is a
        per-device sampler: fixed slices, not Poisson sampling) and Lightning's ``ddp`` strategy (subprocess
        launch: each process runs the whole run, so the accountant of process 0 is the run's).
        """
        trainer = cfg.get("trainer") or {}
        precision = trainer.get("precision", None)
        if precision not in FULL_PRECISION:
            raise ConfigError(MIXED_PRECISION_REFUSAL.format(where=f"trainer.precision={precision}"))
        reason = multi_process_reason(trainer)
        if not reason:
            return
        strategy = trainer.get("strategy", "auto")
        if strategy not in DDP_STRATEGIES:
            raise ConfigError(
                f"optimizer={cls.__name__} on several processes ({reason}) supports trainer.strategy=ddp only, got "
                f"trainer.strategy={strategy}: sharded strategies (fsdp, deepspeed) split the parameters the "
                "per-sample gradients are computed on, and spawned or forked processes (ddp_spawn, ddp_fork) keep "
                "the privacy accountant out of the run's results. Use trainer.strategy=ddp "
                "trainer.use_distributed_sampler=false"
            )
        if trainer.get("use_distributed_sampler", True) not in (False, "false", "False"):
            raise ConfigError(
                f"optimizer={cls.__name__} on several processes ({reason}) needs trainer.use_distributed_sampler="
                "false: Lightning's DistributedSampler is a per-device sampler that gives every process a fixed "
                "slice of the data each epoch, which is not Poisson sampling, so the accountant's sampling rate "
                "would not be the update's. With it off, each process Poisson-samples its own shard of the training "
                "set at the global rate q = data.batch_size / N (together one Poisson sample of the whole set) and "
                "the noise is added once per step; add +trainer.use_distributed_sampler=false"
            )
        federation = (cfg.get("federation") or {}).get("_target_", None)
        if federation is not None and str(federation) != "trustml.federation.centralized.Centralized":
            raise ConfigError(
                f"optimizer={cls.__name__} on several processes ({reason}) trains one centralized model; a "
                "federation simulates its devices in one process: run it with trainer.devices=1"
            )

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[Any]:
        """The privacy accountant (noise plan, per-epoch epsilon, budget stop, checkpointed state), which plans
        for the sampling rate of the training data :meth:`training_data` gave."""
        from trustml.privacy.callback import PrivacyAccountantCallback

        return [PrivacyAccountantCallback()]


#: Offset of the deterministic noise-seed stream from the run seed (the sampler seeds' stream starts at the seed).
NOISE_SEED_STREAM = 0x6E6F697365

SINGLE_PROCESS_STRATEGIES = ("auto", "single_device", None)
#: Lightning strategies under which DP training on several processes is accounted correctly (subprocess DDP; "auto"
#: picks it for several devices).
DDP_STRATEGIES = ("ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "auto", None)


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
