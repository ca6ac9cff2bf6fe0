"""Options of the DP optimizers (``optimizer=dp_sgd|dp_adam``), checked once when the config object is made.

This module imports neither torch nor Opacus, so that registering and listing the DP plugins stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustml.errors import ConfigError

#: How per-sample gradients are clipped (:mod:`trustml.privacy.mechanism`).
CLIPPING_MODES = ("flat", "per_layer", "automatic")
#: Opacus accountants (:mod:`trustml.privacy.accounting`).
ACCOUNTANTS = ("rdp", "prv")
#: Per-sample gradient engines (:data:`trustml.privacy.optimizers.PER_SAMPLE_ENGINES`).
PER_SAMPLE_GRADIENT_ENGINES = ("vmap", "layerwise")
#: ``trainer.precision`` values the DP optimizers support: full precision only (no autocast).
FULL_PRECISION = (None, 32, 64, "32", "64", "32-true", "64-true")
MIXED_PRECISION_REFUSAL = (
    "the DP optimizers do not support mixed precision ({where}): the per-sample "
    "gradients and their norms would be computed in half precision, and the layerwise engine's check that each "
    "gradient is attributed to its own sample compares them at float32 tolerance; train with "
    "trainer.precision=32-true (the default)"
)


@dataclass
class DPOptimizerConfig:
    """Options shared by the DP optimizers (``optimizer.<field>=...``).

    Give ``noise_multiplier`` (sigma), or ``target_epsilon`` alone to calibrate sigma before training from
    the planned steps and sampling rate; with both, sigma is fixed and ``target_epsilon`` is a budget that
    stops training once spent. ``delta`` defaults to ``0.1 / N`` (N training samples) and must be below
    ``1 / N``. ``clipping``: ``flat``, ``per_layer`` or ``automatic`` (Bu et al. 2023: each per-sample gradient
    scaled by ``C / (||g_i|| + clipping_gamma)``; no bound to tune, ``C`` acts as a learning-rate factor; same
    noise and accountant). ``accountant``: ``rdp`` or ``prv``.
    ``per_sample_gradients``: ``layerwise`` (ghost norms and book-keeping per layer; any forward, including
    Hugging Face encoders) or ``vmap`` (whole-model ``torch.func``; for parameters used outside their own
    module's forward, e.g. tied weights). ``max_physical_batch_size`` splits a logical batch into chunks
    (virtual batches). ``noise_seed`` makes the noise reproducible (tests only).

    ``deterministic`` (default false): the Poisson sampler's seeds and, unless ``noise_seed`` is set, the noise
    seed come from OS entropy, so that the batches and the noise stay secret. With ``deterministic=true`` the
    sampler seeds are drawn from a stream seeded by the run ``seed`` and the noise seeds from another stream of the
    run ``seed`` (the plugin's; an optimizer built outside a plugin draws it from torch's global generator), so two
    runs with the same seed train identically, on one process or several (DDP): for reproducible tests and
    debugging only. A deterministic run's privacy guarantee does not hold against
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
    # stability constant gamma of clipping=automatic: g_i * C / (||g_i|| + gamma)
    clipping_gamma: float = 0.01
    accountant: str = "rdp"
    per_sample_gradients: str = "layerwise"
    max_physical_batch_size: int | None = None
    noise_seed: int | None = None
    # batches and noise from the run seed (reproducible); no privacy against readers of the run directory
    deterministic: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` for options that cannot work, naming the option."""
        sigma, target, delta = self.noise_multiplier, self.target_epsilon, self.delta
        if sigma is None and target is None:
            raise ConfigError(
                "DP optimizer needs optimizer.noise_multiplier or optimizer.target_epsilon; set one of them"
            )
        if sigma is not None and sigma <= 0:
            raise ConfigError(f"optimizer.noise_multiplier must be positive, got {sigma} (0 means no privacy)")
        if target is not None and target <= 0:
            raise ConfigError(f"optimizer.target_epsilon must be positive, got {target}")
        if delta is not None and not 0.0 < delta < 1.0:
            raise ConfigError(f"optimizer.delta must be in (0, 1) and below 1/N, got {delta}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"optimizer.max_grad_norm (clipping bound C) must be positive, got {self.max_grad_norm}")
        if self.clipping not in CLIPPING_MODES:
            raise ConfigError(f"optimizer.clipping must be one of {CLIPPING_MODES}, got {self.clipping!r}")
        if self.clipping_gamma <= 0:
            raise ConfigError(
                f"optimizer.clipping_gamma must be positive, got {self.clipping_gamma} (with 0, automatic clipping "
                "scales a near-zero gradient up to norm C); the paper's default is 0.01"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"optimizer.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.per_sample_gradients not in PER_SAMPLE_GRADIENT_ENGINES:
            raise ConfigError(
                f"optimizer.per_sample_gradients must be one of {PER_SAMPLE_GRADIENT_ENGINES}, got "
                f"{self.per_sample_gradients!r}"
            )
        if self.max_physical_batch_size is not None and self.max_physical_batch_size <= 0:
            raise ConfigError(f"optimizer.max_physical_batch_size must be positive, got {self.max_physical_batch_size}")


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
