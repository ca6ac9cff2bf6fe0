"""The Lightning side of DP-SGD: plans each fit's noise before the optimizer is built, stops at the budget.

The callback knows what a fit looks like before it starts (training-set size, expected batch size, planned
steps, the accountant state of earlier fits) and hands the DP optimizer plugin a planner for it; the plugin
builds its optimizer from the :class:`~trustml.privacy.engine.PrivateFit` the planner makes, which accounts every
noisy step from a step hook. What needs Lightning stays here: stopping training when the budget is spent,
logging epsilon, checkpointing the accountant and reporting ``final_results``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DistributedSampler

from trustml.errors import CheckpointError, ConfigError, TrustMLError
from trustml.privacy.compat import check_per_sample_compatible
from trustml.privacy.engine import FitSampling, PrivateFit
from trustml.privacy.options import DPOptimizerConfig
from trustml.privacy.plugins import DPOptimizerPlugin
from trustml.privacy.sampling import PoissonBatchSampler, batches_per_pass, poisson_sample_rate

log = logging.getLogger(__name__)


def _dp_plugin(pl_module: pl.LightningModule) -> DPOptimizerPlugin:
    """The DP optimizer plugin the method builds its optimizer with."""
    plugin = getattr(pl_module, "optimizer_factory", None)
    if not isinstance(plugin, DPOptimizerPlugin):
        raise ConfigError("PrivacyAccountantCallback needs a DP optimizer (optimizer=dp_sgd or optimizer=dp_adam)")
    return plugin


def _train_size(datamodule: Any) -> int:
    """N, the number of training samples of ``datamodule`` (set up)."""
    splits = getattr(datamodule, "splits", None)
    if splits and "train" in splits:
        return len(splits["train"])
    return len(datamodule.train_dataloader().dataset)


def _batches_per_epoch(num_batches: int, trainer: Any) -> int:
    """``num_batches`` after ``trainer.limit_train_batches``, as Lightning counts a fit's training batches."""
    limit = getattr(trainer, "limit_train_batches", 1.0)
    if isinstance(limit, int):
        return min(num_batches, limit)
    return int(num_batches * limit) if isinstance(limit, float) else num_batches


def _planned_steps(batches_per_epoch: int, trainer: Any) -> int | None:
    """Steps of one fit: ``batches_per_epoch * max_epochs``, capped by ``max_steps`` (``None``: no finite epochs)."""
    epochs = trainer.max_epochs
    if epochs is None or epochs < 0:
        return None
    steps = batches_per_epoch * epochs
    return min(steps, trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else steps


def _loader_sampling(trainer: Any) -> tuple[int, float]:
    """``(N, q)``: training-set size and per-step sampling rate of the fit's training data loader."""
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
        "Use trustml.privacy.PoissonBatchSampler for the guarantee to hold.",
        batch,
        num_samples,
    )
    return num_samples, poisson_sample_rate(num_samples, batch)


def _processes(trainer: Any) -> int:
    """Data-parallel training processes of the fit (a federated client's fit view has one)."""
    return int(getattr(trainer, "world_size", 1))


def _check_process_shards(trainer: Any) -> None:
    """Under DDP, refuse a training loader that is not this process's shard of one global Poisson sample.

    A per-process sampler (Lightning's ``DistributedSampler``, or any batch sampler that is not
    :class:`PoissonBatchSampler` sharded over the processes) would give every process fixed-size batches or its
    own sampling rate: the union of the processes' batches would not be a Poisson sample of the training set at
    the rate the accountant counts (:mod:`trustml.privacy.distributed`).
    """
    world = _processes(trainer)
    if world == 1:
        return
    loader = trainer.train_dataloader
    batch_sampler = getattr(loader, "batch_sampler", None)
    rank = int(trainer.global_rank)
    if isinstance(batch_sampler, PoissonBatchSampler) and (batch_sampler.shard, batch_sampler.num_shards) == (
        rank,
        world,
    ):
        _check_same_training_set(trainer)
        return
    if isinstance(batch_sampler, PoissonBatchSampler):
        found = f"PoissonBatchSampler of shard {batch_sampler.shard} of {batch_sampler.num_shards}"
    else:
        sampler = getattr(loader, "sampler", None)
        found = type(sampler if isinstance(sampler, DistributedSampler) else batch_sampler).__name__
    raise ConfigError(
        f"DP training on {world} processes (trainer.strategy=ddp) needs each process to Poisson-sample its shard "
        f"of the training set (trustml.privacy.PoissonBatchSampler with shard={rank}, num_shards={world}, which "
        f"the DP optimizer's training data gives), but process {rank}'s training loader uses {found}: a "
        "per-device sampler such as Lightning's DistributedSampler gives every process a fixed slice of the "
        "data, not one Poisson sample of the whole set at the rate the accountant counts. Keep "
        "trainer.use_distributed_sampler=false and the data module's train loader built from its "
        "train_batch_sampler_factory"
    )


def _training_set_fingerprint(datamodule: Any) -> tuple[int, int]:
    """``(N, checksum of the training samples' ids and labels)``: equal on processes that hold the same training set."""
    splits = getattr(datamodule, "splits", None)
    if not splits or "train" not in splits:
        return _train_size(datamodule), 0
    train = splits["train"]
    weights = torch.arange(1, len(train) + 1, dtype=torch.int64)
    return len(train), int(((train.index.long() * 1_000_003 + train.labels.long()) * weights).sum())


def _check_same_training_set(trainer: Any) -> None:
    """Refuse DDP processes whose training sets differ (e.g. splits drawn from different run seeds): their shards
    would not partition one training set."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    mine = _training_set_fingerprint(trainer.datamodule)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if len(set(gathered)) > 1:
        sizes = [n for n, _ in gathered]
        raise ConfigError(
            f"the {len(gathered)} DDP processes of this DP run hold different training sets (sizes {sizes} or "
            "different samples), so their Poisson shards do not partition one data set; give every process the "
            "same seed and data options (set seed=<int> rather than drawing one per process)"
        )


def _check_min_epochs_fit(trainer: Any, steps_left: int) -> None:
    """Refuse a ``min_epochs`` that would force training past the privacy budget."""
    min_epochs = trainer.fit_loop.min_epochs or 0
    forced = (min_epochs - trainer.current_epoch) * trainer.num_training_batches
    if forced > steps_left:
        raise ConfigError(
            f"trainer.min_epochs={min_epochs} forces {int(forced)} more steps but the privacy budget "
            f"optimizer.target_epsilon affords only {steps_left}; set trainer.min_epochs=0 (or raise the budget)"
        )


class PrivacyAccountantCallback(pl.Callback):
    """Plans, accounts and bounds the privacy loss of a DP optimizer over a run (and across resumes).

    At ``setup`` (before the optimizer is built) it reads the fit's sampling from the data module (N training
    samples, expected batch size, so the Poisson rate ``q``) and its planned steps from the trainer, and gives
    the method's DP optimizer plugin a planner: the plugin builds its optimizer from the
    :class:`~trustml.privacy.engine.PrivateFit` it makes (delta checked, sigma calibrated for ``target_epsilon``
    when no noise multiplier is set), which accounts each noisy step from a step hook. The callback logs
    ``privacy/epsilon`` every epoch and stops training when one more step would exceed ``target_epsilon``. Its
    state (accountant history, sigma, delta) is saved in checkpoints; resuming from a checkpoint without it is
    refused, so a resume never resets the spent budget. Under a federation it runs inside every client's local
    training: example-level DP on each device, which accounts its own epsilon over all the rounds it takes part
    in (its state travels with the device between rounds). The federation sets :attr:`planned_fits`, the number
    of local fits (rounds) the device plans its budget for, so sigma is calibrated for ``planned_fits`` times one
    fit's steps; once the budget is spent ``final_results()`` reports ``budget_spent = 1`` and the federation
    selects the device no more. (Client-level DP, which protects a device's whole data set, is DP-FedAvg:
    ``federation.privacy.noise_multiplier``.)
    """

    #: reads only what a federated client loop's fit view provides (trustml.federation.local_loop)
    client_loop_ready = True

    federated_scope = "client"

    def __init__(self) -> None:
        #: local fits whose steps the calibrated noise is planned for (1 for a centralized run)
        self.planned_fits = 1
        self.fit: PrivateFit | None = None
        self._sampling: FitSampling | None = None
        self._restored: dict[str, Any] | None = None

    # --- before the optimizer is built ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        num_samples, batch = _train_size(datamodule), int(datamodule.batch_size)
        poisson = getattr(datamodule, "train_batch_sampler_factory", None) is not None
        rate = poisson_sample_rate(num_samples, batch)
        per_epoch = batches_per_pass(rate) if poisson else math.ceil(num_samples / batch)
        steps = _planned_steps(_batches_per_epoch(per_epoch, trainer), trainer)
        planned = None if steps is None else steps * self.planned_fits
        self._sampling = FitSampling(num_samples, rate, planned, processes=_processes(trainer))
        self.fit = None
        _dp_plugin(pl_module).expect_fit(self.start_fit)

    def start_fit(self, options: DPOptimizerConfig) -> PrivateFit:
        """This fit's :class:`PrivateFit` for a DP optimizer with ``options`` (called by the plugin's ``build``)."""
        if self._sampling is None:
            raise TrustMLError("PrivacyAccountantCallback.start_fit called before setup")
        self.fit = PrivateFit(options, self._sampling, self._restored)
        return self.fit

    # --- once the fit runs ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_per_sample_compatible(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.fit is None:
            raise ConfigError("PrivacyAccountantCallback needs a DP optimizer (optimizer=dp_sgd or optimizer=dp_adam)")
        _check_process_shards(trainer)
        num_samples, rate = _loader_sampling(trainer)
        planned = self.fit.sampling
        if (num_samples, rate) != (planned.num_samples, planned.sample_rate):
            raise TrustMLError(
                f"the DP noise was planned for N={planned.num_samples} samples at rate {planned.sample_rate:.4g}, "
                f"but the training loader has N={num_samples} at rate {rate:.4g}"
            )
        if self.fit.steps_left is not None:
            _check_min_epochs_fit(trainer, self.fit.steps_left)
            self._stop_if_spent(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._stop_if_spent(trainer)

    def _stop_if_spent(self, trainer: pl.Trainer) -> None:
        if self.fit is not None and self.fit.budget_spent:
            trainer.should_stop = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw this epoch's Poisson batches from its own stream (Lightning sets no epoch on a batch sampler)."""
        batch_sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if isinstance(batch_sampler, PoissonBatchSampler):
            batch_sampler.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("privacy/epsilon", self.epsilon(), on_epoch=True, prog_bar=True)

    # --- results -------------------------------------------------------------------------------------
    @property
    def noise_multiplier(self) -> float | None:
        """Sigma of the fit (``None`` before it is planned)."""
        return None if self.fit is None else self.fit.noise_multiplier

    def epsilon(self) -> float:
        """epsilon spent so far at the run's delta."""
        return self.fit.epsilon() if self.fit is not None else 0.0

    @property
    def budget_spent(self) -> bool:
        """Whether ``target_epsilon`` affords no further step."""
        return self.fit is not None and self.fit.budget_spent

    def final_results(self) -> dict[str, float]:
        """The fit's :meth:`PrivateFit.final_results` (epsilon, delta, sigma, rate, steps, budget spent)."""
        return {} if self.fit is None else self.fit.final_results()

    # --- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.fit is None:
            return dict(self._restored or {})
        return self.fit.state_dict()

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
