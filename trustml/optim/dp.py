"""DP-SGD and DP-Adam: per-sample clipped, Gaussian-noised updates (Abadi et al., 2016).

Each logical batch (Poisson-sampled, see :class:`trustml.privacy.sampling.PoissonBatchSampler`) gives the
update direction ``(sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / L`` with ``L`` the expected batch size,
which the wrapped ``torch.optim`` rule (SGD with momentum, or Adam) then applies. Per-sample gradients
come layer by layer from activations and output gradients (ghost norms and book-keeping: never
materialized for linear and embedding layers; ``torch.func`` for other layers), or from a whole-model
``torch.func`` ``vmap(grad)``. A logical batch is processed in physical chunks of
``max_physical_batch_size`` samples, so a large batch fits in memory (virtual batches).
:class:`trustml.privacy.callback.PrivacyAccountantCallback` calibrates ``sigma`` for ``target_epsilon``,
accounts every step and stops training when the budget is spent.

Secrecy of the randomness: amplification by subsampling (what the accountant counts) assumes that nobody
learns which samples each batch holds, and the Gaussian mechanism that nobody learns the noise. By default
both come from OS entropy (``secrets``/``torch.Generator.seed``), so nothing the run directory records (the
run seed, the config) reproduces them; ``optimizer.deterministic=true`` derives them from the run seed
instead, for reproducible tests, and then the guarantee does not hold against whoever reads the run directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from pytorch_lightning import Callback
from torch import Tensor, nn

from trustml.errors import ConfigError, TrustMLError
from trustml.optim.base import PerSampleGradientOptimizer, SampleLossFn
from trustml.privacy.accounting import ACCOUNTANTS
from trustml.privacy.batching import Batch, batch_size, split_batch
from trustml.privacy.callback import PrivacyAccountantCallback
from trustml.privacy.compat import check_per_sample_compatible
from trustml.privacy.mechanism import CLIPPING_MODES, add_gaussian_noise, clipped_sum
from trustml.privacy.per_sample import MaterializedGradients, PerSampleResult
from trustml.privacy.per_sample_layerwise import check_layerwise_covers, layerwise_per_sample_gradients
from trustml.privacy.per_sample_vmap import vmap_per_sample_gradients
from trustml.privacy.sampling import PoissonSamplerFactory
from trustml.registry import register

PER_SAMPLE_ENGINES = {"vmap": vmap_per_sample_gradients, "layerwise": layerwise_per_sample_gradients}


class PrivacyBudgetSpent(TrustMLError):
    """A noisy step was requested after the privacy budget (``target_epsilon``) was spent."""


@dataclass
class DPOptimizerConfig:
    """Options shared by the DP optimizers (``optimizer.<field>=...``).

    Give ``noise_multiplier`` (sigma), or ``target_epsilon`` alone to calibrate sigma before training from
    the planned steps and sampling rate; with both, sigma is fixed and ``target_epsilon`` is a budget that
    stops training once spent. ``delta`` defaults to ``0.1 / N`` (N training samples) and must be below
    ``1 / N``. ``clipping``: ``flat`` or ``per_layer``. ``accountant``: ``rdp`` or ``prv``.
    ``per_sample_gradients``: ``layerwise`` (ghost norms and book-keeping per layer; any forward, including
    Hugging Face encoders) or ``vmap`` (whole-model ``torch.func``; for parameters used outside their own
    module's forward, e.g. tied weights). ``max_physical_batch_size`` splits a logical batch into chunks
    (virtual batches). ``noise_seed`` makes the noise reproducible (tests only).

    ``deterministic`` (default false): the Poisson sampler's seeds and, unless ``noise_seed`` is set, the noise
    seed come from OS entropy, so that the batches and the noise stay secret. With ``deterministic=true`` the
    sampler seeds are drawn from a stream seeded by the run ``seed`` and the noise seed from torch's global
    generator (which the runner seeds with the run ``seed``), so two runs with the same seed train identically:
    for reproducible tests and debugging only. A deterministic run's privacy guarantee does not hold against
    anyone who reads the run directory (the recorded seed gives away which samples every batch held and the
    noise added to every step), only against those who see the trained model alone.
    """

    lr: float = 0.1
    noise_multiplier: float | None = None
    # a budget by default: sigma is calibrated so that the planned training spends epsilon = 8 at delta
    target_epsilon: float | None = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    clipping: str = "flat"
    accountant: str = "rdp"
    per_sample_gradients: str = "layerwise"
    max_physical_batch_size: int | None = None
    noise_seed: int | None = None
    # batches and noise from the run seed (reproducible); no privacy against readers of the run directory
    deterministic: bool = False
    weight_decay: float = 0.0


@dataclass
class DPSGDConfig(DPOptimizerConfig):
    """DP-SGD options: the shared DP options plus SGD's momentum."""

    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class DPAdamConfig(DPOptimizerConfig):
    """DP-Adam options: the shared DP options plus Adam's moments."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def check_dp_options(options: Any) -> None:
    """Raise :class:`ConfigError` for DP options that cannot work (``options`` has the config's fields)."""
    sigma, target, delta = options.noise_multiplier, options.target_epsilon, options.delta
    if sigma is None and target is None:
        raise ConfigError("DP optimizer needs optimizer.noise_multiplier or optimizer.target_epsilon; set one of them")
    if sigma is not None and sigma <= 0:
        raise ConfigError(f"optimizer.noise_multiplier must be positive, got {sigma} (0 means no privacy)")
    if target is not None and target <= 0:
        raise ConfigError(f"optimizer.target_epsilon must be positive, got {target}")
    if delta is not None and not 0.0 < delta < 1.0:
        raise ConfigError(f"optimizer.delta must be in (0, 1) and below 1/N, got {delta}")
    if options.max_grad_norm <= 0:
        raise ConfigError(f"optimizer.max_grad_norm (clipping bound C) must be positive, got {options.max_grad_norm}")
    if options.clipping not in CLIPPING_MODES:
        raise ConfigError(f"optimizer.clipping must be one of {CLIPPING_MODES}, got {options.clipping!r}")
    if options.accountant not in ACCOUNTANTS:
        raise ConfigError(f"optimizer.accountant must be one of {ACCOUNTANTS}, got {options.accountant!r}")
    if options.per_sample_gradients not in PER_SAMPLE_ENGINES:
        raise ConfigError(
            f"optimizer.per_sample_gradients must be one of {tuple(PER_SAMPLE_ENGINES)}, got "
            f"{options.per_sample_gradients!r}"
        )
    if options.max_physical_batch_size is not None and options.max_physical_batch_size <= 0:
        raise ConfigError(f"optimizer.max_physical_batch_size must be positive, got {options.max_physical_batch_size}")


class DPOptimizer(PerSampleGradientOptimizer):
    """Private step shared by :class:`DPSGD` and :class:`DPAdam`; the update rule comes from the torch base."""

    def _init_privacy(self, options: DPOptimizerConfig) -> None:
        check_dp_options(options)
        self.noise_multiplier = options.noise_multiplier
        self.target_epsilon = options.target_epsilon
        self.delta = options.delta
        self.max_grad_norm = options.max_grad_norm
        self.clipping = options.clipping
        self.accountant = options.accountant
        self.per_sample_gradients = options.per_sample_gradients
        self.max_physical_batch_size = options.max_physical_batch_size
        self.deterministic = options.deterministic
        self.noise_seed = options.noise_seed
        if self.noise_seed is None and self.deterministic:
            # drawn from the global generator, which the runner seeds with the run seed: reproducible, and
            # different for every optimizer built in a run (e.g. each federated client's)
            self.noise_seed = int(torch.randint(0, 2**62, ()))
        #: Denominator of the noisy mean; the accountant callback sets it to the expected Poisson batch size.
        self.expected_batch_size: float | None = None
        #: Number of noisy updates applied so far (the accountant callback counts them).
        self.noisy_steps = 0
        #: Set by the accountant callback when one more step would exceed ``target_epsilon``.
        self.budget_spent = False
        self._generators: dict[torch.device, torch.Generator] = {}
        self._checked_models: set[int] = set()

    # --- configuration by the accountant -------------------------------------------------------------
    def configure_noise(self, noise_multiplier: float, expected_batch_size: float) -> None:
        """Set sigma (e.g. calibrated for ``target_epsilon``) and the expected logical batch size ``L = qN``.

        ``L`` is the denominator of the noisy mean; it must not depend on the realised (private) batch size.
        """
        if noise_multiplier <= 0:
            raise ConfigError(f"noise multiplier must be positive, got {noise_multiplier}")
        if expected_batch_size is None or not expected_batch_size > 0:
            raise ConfigError(
                f"the expected batch size must be positive (sampling rate q times the N training samples), got "
                f"{expected_batch_size}"
            )
        self.noise_multiplier = noise_multiplier
        self.expected_batch_size = float(expected_batch_size)

    # --- the private step ----------------------------------------------------------------------------
    def private_gradients(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: Batch
    ) -> tuple[Tensor, Tensor]:
        """Noisy mean of clipped per-sample gradients of ``batch`` (in physical chunks) into each ``.grad``.

        ``g = (sum_i clip(g_i, C) + N(0, sigma^2 C^2 I)) / L`` with ``L`` the expected batch size that
        :meth:`configure_noise` set (never the realised batch size ``|B|``, which depends on the private Poisson
        draw); returns detached (logits, mean loss).
        """
        if self.budget_spent:
            raise PrivacyBudgetSpent(
                f"the privacy budget optimizer.target_epsilon={self.target_epsilon} is spent; training must stop "
                f"(remove trainer.min_steps, which forces it to go on)"
            )
        if self.noise_multiplier is None:
            raise ConfigError(
                "the DP optimizer has no noise multiplier yet: with optimizer.target_epsilon it is calibrated by "
                "PrivacyAccountantCallback (runtime_callbacks) before training; outside a Trainer pass "
                "noise_multiplier="
            )
        if self.expected_batch_size is None:
            raise ConfigError(
                "the DP optimizer has no expected batch size: the noisy mean divides by the expected Poisson batch "
                "size L = qN, never by the realised batch size (which depends on the private draw). "
                "PrivacyAccountantCallback (runtime_callbacks) configures it before training; outside a Trainer "
                "call optimizer.configure_noise(noise_multiplier, expected_batch_size=...)"
            )
        params = self._trainable_params(model)
        self._check_model(model, params, sample_losses, batch)
        total: dict[str, Tensor] = {}
        logits, losses = [], []
        for chunk in split_batch(batch, self.max_physical_batch_size):
            result = self._per_sample(model, params, sample_losses, chunk)
            for name, summed in clipped_sum(result.grads, self.max_grad_norm, self.clipping).items():
                total[name] = total[name] + summed if name in total else summed
            logits.append(result.logits)
            losses.append(result.losses)
        noisy = add_gaussian_noise(total, self.noise_multiplier * self.max_grad_norm, self._generator(total))
        for name, p in params.items():
            p.grad = noisy[name] / self.expected_batch_size
        self.noisy_steps += 1
        all_losses = torch.cat(losses)
        return torch.cat(logits), all_losses.mean() if all_losses.numel() else all_losses.sum()

    def _per_sample(
        self, model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
    ) -> PerSampleResult:
        if batch_size(batch) == 0:
            with torch.no_grad():
                logits = model(batch["x"])
            empty = {name: p.new_zeros(0, *p.shape) for name, p in params.items()}
            return PerSampleResult(MaterializedGradients(empty), logits, logits.new_zeros(0))
        return PER_SAMPLE_ENGINES[self.per_sample_gradients](model, params, sample_losses, batch)

    def _trainable_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        mine = {id(p) for group in self.param_groups for p in group["params"]}
        params = {name: p for name, p in model.named_parameters() if p.requires_grad and id(p) in mine}
        if len(params) != len(mine):
            raise ConfigError(
                f"the DP optimizer holds {len(mine)} parameters but the model passed to private_gradients has only "
                f"{len(params)} of them trainable; build the optimizer from the trainable parameters of that model"
            )
        return params

    def _check_model(
        self, model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
    ) -> None:
        """Once per model: refuse batch-dependent layers, and check the layerwise attribution on ``batch``.

        An empty (Poisson) batch cannot be checked: the model is checked on the first non-empty one.
        """
        if id(model) in self._checked_models:
            return
        check_per_sample_compatible(model)
        if self.per_sample_gradients == "layerwise":
            if batch_size(batch) == 0:
                return
            check_layerwise_covers(model, params, sample_losses, next(split_batch(batch, self.max_physical_batch_size)))
        self._checked_models.add(id(model))

    def _generator(self, tensors: dict[str, Tensor]) -> torch.Generator:
        device = next(iter(tensors.values())).device
        if device not in self._generators:
            generator = torch.Generator(device=device)
            if self.noise_seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.noise_seed)
            self._generators[device] = generator
        return self._generators[device]

    # --- runner hooks --------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Check the ``optimizer`` options of the composed config before anything is built."""
        check_dp_options(cfg.optimizer)

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[Callback]:
        """Poisson-sample the training batches and add the privacy accountant.

        A data module with a ``train_batch_sampler_factory`` slot (``TrustDataModule``) gets
        :class:`PoissonBatchSampler` (expected batch size ``data.batch_size``; secret seeds from OS entropy, or
        seeds drawn from ``cfg.seed`` with ``optimizer.deterministic=true``); the accountant (calibration,
        per-epoch epsilon, budget stop, checkpointed state) reads its rate.
        """
        if hasattr(datamodule, "train_batch_sampler_factory"):
            seed = None
            if cfg.optimizer.get("deterministic", False):
                seed = int(cfg.seed) if cfg.get("seed") is not None else 0
            datamodule.train_batch_sampler_factory = PoissonSamplerFactory(seed)
        return [PrivacyAccountantCallback()]


def _parse_options(config_class: type[DPOptimizerConfig], options: dict[str, Any]) -> Any:
    try:
        return config_class(**options)
    except TypeError as exc:
        raise ConfigError(f"{exc}; valid options: {sorted(config_class.__dataclass_fields__)}") from exc


@register("optimizer", "dp_sgd", dataclass=DPSGDConfig, partial=True)
class DPSGD(DPOptimizer, torch.optim.SGD):
    """DP-SGD: SGD on clipped, noised per-sample gradients (example-level DP; per device in a federation)."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], **options: Any) -> None:
        opts = _parse_options(DPSGDConfig, options)
        torch.optim.SGD.__init__(
            self, params, lr=opts.lr, momentum=opts.momentum, nesterov=opts.nesterov, weight_decay=opts.weight_decay
        )
        self._init_privacy(opts)


@register("optimizer", "dp_adam", dataclass=DPAdamConfig, partial=True)
class DPAdam(DPOptimizer, torch.optim.Adam):
    """DP-Adam: Adam on clipped, noised per-sample gradients (example-level DP; per device in a federation)."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], **options: Any) -> None:
        opts = _parse_options(DPAdamConfig, options)
        torch.optim.Adam.__init__(
            self, params, lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps, weight_decay=opts.weight_decay
        )
        self._init_privacy(opts)

