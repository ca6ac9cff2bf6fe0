"""``method=lqf``: linear quadratic fine-tuning (Achille, Golatkar, Ravichandran, Polito, Soatto; CVPR 2021).

LQF fine-tunes the first-order Taylor expansion of the network around its pretrained weights ``w0``,

    f_lin(x; w) = f(x; w0) + J_w f(x; w0) (w - w0),

which is linear in ``w``: with the squared loss the training problem is a convex quadratic. The paper makes the
linearized model fine-tune as well as the nonlinear one with three changes, none sufficient alone:

1. leaky-ReLU instead of ReLU (or GELU) in the linearized part (``leaky_relu_slope``), so that the Jacobian does
   not vanish on the units that are off at ``w0``;
2. the mean squared error on scaled one-hot targets instead of cross-entropy (``loss=mse``, ``target_scale`` =
   ``alpha``): ``L(w) = (1/N) sum_i ||f_lin(x_i; w) - alpha Y_i||^2``, whose Hessian ``(2/N) sum_i J_i^T J_i``
   does not depend on ``w``;
3. Kronecker-factored preconditioning (``precondition=kfac``, :mod:`trustml.optim.kfac`): the gradient of every
   linearized Linear layer is replaced by ``G^-1 grad_W A^-1`` before the configured optimizer's step. With the
   squared loss the factors are constant, so ``kfac_update_every=0`` computes them once (at the start of training,
   from up to ``kfac_samples`` training samples); ``k > 0`` recomputes them from the current batch every ``k``
   steps (needed for ``loss=ce``, whose Fisher depends on the current predictions). ``kfac_fisher=exact`` computes
   the output-gradient factor as the exact expectation over the model's predictive distribution (one backward
   pass per class); ``sampled`` uses one backward pass per update with targets sampled from the model (an unbiased
   Monte-Carlo estimate; cheaper with many classes). ``kfac_damping`` is the factored Tikhonov damping.

Implementation: :class:`LinearizedNetwork` keeps the network, in eval mode, at ``w0`` (all its parameters frozen)
and trains only ``delta = w - w0`` of the linearized set (``linearize=head|last_k_layers|all``; a *layer* is a leaf
module that owns parameters, in registration order). Every parameter outside the linearized set stays frozen at
``w0``. One forward is one ``torch.func.jvp`` of ``functional_call(network, w0)`` along the tangent ``delta``: it
returns ``f(x; w0)`` and ``J delta`` together in one extra (forward-mode) pass, and the Jacobian is never
materialized; backpropagating through the tangent output gives ``J^T dL/df`` for the update. The network is kept in
eval mode (dropout off, normalization statistics frozen) so that ``f(.; w0)`` is one fixed function to linearize.

``init_run_dir``: ``w0`` is the trained network of a completed trustml run (its ``init_checkpoint``, loaded through
:func:`trustml.run_record.load_model_from_run`); it must be the same architecture (``model`` config) and classes.
Without it, ``w0`` is the model's weights when built (a pretrained encoder's weights; for a fresh MLP: its random
initialization, i.e. the neural-tangent-kernel model).

Composition: the trainable state is ``delta`` only, so ``optimizer=adam|adamw|sgd`` receive the preconditioned
gradient, and a ``federation`` averages ``delta``; because ``f_lin`` is linear in ``delta``, the average of the
clients' models *is* the model of the averaged update, ``f_lin(x; mean_k w_k) = mean_k f_lin(x; w_k)`` (exactly,
unlike a nonlinear network). Checkpoints hold ``network.*`` (``w0``) and ``delta.*``; an LQF run is rebuilt by this
method, not by ``load_model_from_run`` (which rebuilds the plain ``model``). DP optimizers are refused: their
per-sample gradients do not cover the JVP model.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.func import functional_call, jvp

from trustml.errors import CheckpointError, ConfigError
from trustml.methods.base import Batch, ClassificationMethod, OptimizerFactory, selects_per_sample_optimizer
from trustml.optim.kfac import FISHER_KINDS, KFAC, check_covered, precondition_before_step
from trustml.registry import register

log = logging.getLogger(__name__)

LINEARIZE = ("head", "last_k_layers", "all")
LOSSES = ("mse", "ce")
PRECONDITIONERS = ("kfac", "none")
#: Activations swapped for leaky-ReLU in the linearized part (torch's, and Hugging Face's GELU classes by name).
SWAPPABLE = (nn.ReLU, nn.GELU)


@dataclass
class LQFConfig:
    """Options of ``method=lqf``.

    ``linearize``: which layers are linearized around their weights ``w0`` (``head``, ``last_k_layers`` with ``k``,
    or ``all``); every other parameter stays frozen at ``w0``. ``exclude``: shell-style patterns (``fnmatch``) of
    layer names that stay frozen at ``w0`` although ``linearize`` selects them, e.g. ``["*LayerNorm"]`` to linearize
    a transformer block's Linear layers only (which K-FAC covers). ``loss``: ``mse`` on one-hot targets times
    ``target_scale``, or ``ce``. ``leaky_relu_slope``: ReLU/GELU modules after the first linearized layer become
    LeakyReLU with this slope (0 keeps them). ``precondition``: ``kfac`` (damping ``kfac_damping``, factors from up
    to ``kfac_samples`` training samples, recomputed every ``kfac_update_every`` steps; 0 = once at the start;
    ``kfac_fisher``: ``exact`` expectation, one backward per class, or ``sampled``, one backward with targets drawn
    from the model) or ``none``. ``init_run_dir`` / ``init_checkpoint``: take ``w0`` from a completed run's
    checkpoint.
    """

    linearize: str = "all"
    k: int = 1
    exclude: list[str] = field(default_factory=list)
    loss: str = "mse"
    target_scale: float = 1.0
    leaky_relu_slope: float = 0.1
    precondition: str = "kfac"
    kfac_damping: float = 1.0
    kfac_update_every: int = 0
    kfac_samples: int = 2048
    kfac_fisher: str = "exact"
    init_run_dir: str | None = None
    init_checkpoint: str = "best"

    def __post_init__(self) -> None:
        if self.linearize not in LINEARIZE:
            raise ConfigError(f"method.linearize must be one of {LINEARIZE}, got '{self.linearize}'")
        if self.linearize == "last_k_layers" and self.k < 1:
            raise ConfigError(f"method.k must be >= 1 with method.linearize=last_k_layers, got {self.k}")
        if self.loss not in LOSSES:
            raise ConfigError(f"method.loss must be one of {LOSSES}, got '{self.loss}'")
        if self.precondition not in PRECONDITIONERS:
            raise ConfigError(f"method.precondition must be one of {PRECONDITIONERS}, got '{self.precondition}'")
        if not 0.0 <= self.leaky_relu_slope < 1.0:
            raise ConfigError(
                f"method.leaky_relu_slope must be in [0, 1) (0 keeps ReLU/GELU), got {self.leaky_relu_slope}"
            )
        if self.target_scale <= 0:
            raise ConfigError(f"method.target_scale must be > 0, got {self.target_scale}")
        if self.precondition == "kfac" and self.kfac_damping <= 0:
            raise ConfigError(f"method.kfac_damping must be > 0, got {self.kfac_damping}")
        if self.kfac_fisher not in FISHER_KINDS:
            raise ConfigError(
                f"method.kfac_fisher must be one of {FISHER_KINDS} (exact: one backward per class; sampled: one "
                f"backward with targets drawn from the model), got '{self.kfac_fisher}'"
            )
        if self.kfac_update_every < 0:
            raise ConfigError(
                f"method.kfac_update_every must be >= 0 (0 = once at the start), got {self.kfac_update_every}"
            )


def parameter_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in registration order: the *layers* ``linearize`` counts."""
    return [
        (name, m)
        for name, m in network.named_modules()
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def select_layers(network: nn.Module, linearize: str, k: int = 1, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the layers of ``network`` that ``linearize`` (and ``k``) select, less those matching ``exclude``."""
    if linearize not in LINEARIZE:
        raise ConfigError(f"method.linearize must be one of {LINEARIZE}, got '{linearize}'")
    layers = [name for name, _ in parameter_layers(network)]
    if not layers:
        raise ConfigError(f"{type(network).__name__} has no layer with parameters to linearize")
    if linearize == "head":
        selected = layers[-1:]
    elif linearize == "last_k_layers":
        if k < 1 or k > len(layers):
            raise ConfigError(f"method.k={k} but {type(network).__name__} has {len(layers)} layers with parameters")
        selected = layers[-k:]
    else:
        selected = layers
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in selected):
            raise ConfigError(
                f"method.exclude pattern '{pattern}' matches none of the layers method.linearize={linearize} selects "
                f"({selected}); fix the pattern (shell-style, e.g. '*LayerNorm') or remove it"
            )
    kept = [name for name in selected if not any(fnmatch.fnmatchcase(name, p) for p in exclude)]
    if not kept:
        raise ConfigError(f"method.exclude={list(exclude)} excludes every layer method.linearize={linearize} selects")
    return kept


def swap_activations(network: nn.Module, first_layer: str, slope: float) -> list[str]:
    """Replace ReLU/GELU modules registered after ``first_layer`` by ``LeakyReLU(slope)``; the swapped names.

    Only activations downstream of the first linearized layer enter the Jacobian of the linearized part. A module
    that calls an activation *function* (not a module) cannot be changed here and is left as it is.
    """
    if slope <= 0:
        return []
    names = [name for name, _ in network.named_modules()]
    start = names.index(first_layer)
    swapped = []
    for name, module in list(network.named_modules())[start + 1 :]:
        is_gelu_like = type(module).__name__ in ("GELUActivation", "NewGELUActivation", "FastGELUActivation")
        if isinstance(module, SWAPPABLE) or is_gelu_like:
            *parent_path, leaf = name.split(".")
            parent = network.get_submodule(".".join(parent_path)) if parent_path else network
            setattr(parent, leaf, nn.LeakyReLU(slope))
            swapped.append(f"{name} ({type(module).__name__})")
    return swapped


class LinearizedNetwork(nn.Module):
    """``f_lin(x; w0 + delta) = f(x; w0) + J_w f(x; w0) delta`` for the parameters ``names`` of ``network``.

    ``network`` holds ``w0`` (frozen, eval mode); ``delta`` (zeros at the start) is the only trainable state.
    """

    def __init__(self, network: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.names = list(names)
        params = dict(network.named_parameters())
        self.delta = nn.ParameterList([nn.Parameter(torch.zeros_like(params[n])) for n in self.names])
        # pass through the network's input conventions (e.g. text featurization)
        for attr in ("featurize", "source", "max_length", "cache_embeddings"):
            if hasattr(network, attr):
                object.__setattr__(self, attr, getattr(network, attr))

    def train(self, mode: bool = True) -> LinearizedNetwork:
        """Only the flag: the wrapped network stays in eval mode (``f(.; w0)`` must be one fixed function)."""
        self.training = mode
        return self

    def base_parameters(self) -> tuple[Tensor, ...]:
        """``w0`` of the linearized parameters, in the order of ``delta``."""
        params = dict(self.network.named_parameters())
        return tuple(params[n] for n in self.names)

    def forward_with_tangent(self, x: Any) -> tuple[Tensor, Tensor]:
        """``(f(x; w0), J delta)`` from one ``torch.func.jvp``."""

        def f(*ws: Tensor) -> Tensor:
            return functional_call(self.network, dict(zip(self.names, ws, strict=True)), (x,))

        try:
            return jvp(f, self.base_parameters(), tuple(self.delta))
        except (NotImplementedError, RuntimeError) as exc:
            if "forward" not in str(exc).lower() and "jvp" not in str(exc).lower():
                raise
            raise ConfigError(
                f"method=lqf: a layer of {type(self.network).__name__} has no forward-mode AD support ({exc}); "
                f"linearize fewer layers (method.linearize=head or last_k_layers with a smaller k; now {self.names})"
            ) from None

    def forward(self, x: Any) -> Tensor:
        """Class logits of the linearized model."""
        out, tangent = self.forward_with_tangent(x)
        return out + tangent

    def linearized_layers(self) -> dict[str, nn.Module]:
        """Owner module of each linearized parameter (layer name -> module)."""
        return {n.rpartition(".")[0]: self.network.get_submodule(n.rpartition(".")[0]) for n in self.names}


def _load_w0(model: nn.Module, run_dir: str, checkpoint: str, num_classes: int) -> None:
    from trustml.run_record import load_model_from_run

    trained, spec = load_model_from_run(run_dir, checkpoint)
    if spec.get("num_classes") != num_classes:
        raise CheckpointError(
            f"method.init_run_dir={run_dir} predicts {spec.get('num_classes')} classes but the data has {num_classes}"
        )
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(
            f"method.init_run_dir={run_dir}: its network does not fit this run's model config: {exc}"
        ) from None


@register("method", "lqf", dataclass=LQFConfig)
class LinearQuadraticFineTuning(ClassificationMethod):
    """Fine-tunes the linearization of the network around ``w0`` (LQF): leaky-ReLU, MSE, K-FAC."""

    def __init__(self, config: LQFConfig, *, model: nn.Module, optimizer: OptimizerFactory, num_classes: int) -> None:
        if config.init_run_dir:
            _load_w0(model, config.init_run_dir, config.init_checkpoint, num_classes)
        layers = select_layers(model, config.linearize, config.k, config.exclude)
        if config.precondition == "kfac":
            modules = dict(model.named_modules())
            check_covered({name: modules[name] for name in layers})
        swapped = swap_activations(model, layers[0], config.leaky_relu_slope)
        log.info(
            "lqf: linearized layers %s; activations swapped to LeakyReLU(%s): %s",
            layers,
            config.leaky_relu_slope,
            swapped or "none",
        )
        names = [
            f"{layer}.{p}" if layer else p
            for layer in layers
            for p, _ in model.get_submodule(layer).named_parameters(recurse=False)
        ]
        super().__init__(config, model=LinearizedNetwork(model, names), optimizer=optimizer, num_classes=num_classes)
        self.linearized, self.swapped = layers, swapped
        self.loss_kind, self.target_scale = config.loss, config.target_scale
        self.kfac_update_every, self.kfac_samples = config.kfac_update_every, config.kfac_samples
        kfac = config.precondition == "kfac"
        self.kfac: KFAC | None = None
        if kfac:
            # the sampled Fisher's generator is seeded from the global RNG (the run's seed), not a fixed constant
            seed = int(torch.randint(0, 2**31 - 1, (1,))) if config.kfac_fisher == "sampled" else 0
            self.kfac = KFAC(self.model.network, layers, config.loss, config.kfac_damping, config.kfac_fisher, seed)
        self.last_x: Any = None
        self.steps = 0

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Before anything is built: no DP optimizer, a complete ``init_run_dir``."""
        m = cfg.method
        if selects_per_sample_optimizer(cfg):
            raise ConfigError(
                "method=lqf cannot run with a per-sample-gradient optimizer (DP): per-sample gradients of the JVP "
                "(linearized) model are not supported; use optimizer=adam|adamw|sgd"
            )
        if m.init_run_dir:
            from trustml.methods.old_model import check_run_dirs

            check_run_dirs([str(m.init_run_dir)], "method.init_run_dir", str(m.init_checkpoint))

    # --- the objective -------------------------------------------------------------------------------
    def sample_losses(self, logits: Tensor, batch: Batch) -> Tensor:
        """``||f_lin(x_i) - alpha Y_i||^2`` (``loss=mse``) or the cross-entropy (``loss=ce``), per sample."""
        return lqf_sample_losses(logits, batch["y"], self.loss_kind, self.target_scale)

    def batch_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Mean of :meth:`sample_losses`."""
        return self.sample_losses(logits, batch).mean()

    def prepare_batch(self, batch: Batch) -> Batch:
        """Remember the batch's inputs (K-FAC refreshes its factors from them every ``kfac_update_every`` steps)."""
        self.last_x = batch["x"]
        return batch

    # --- K-FAC ---------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """``kfac_update_every=0``: the factors, once, from up to ``kfac_samples`` training samples."""
        if self.kfac is None or self.kfac_update_every != 0 or self.kfac.updates:
            return
        splits = getattr(getattr(self.trainer, "datamodule", None), "splits", None) or {}
        train = splits.get("train")
        if train is None:
            return  # computed from the first batch instead
        from trustml.data.base import take

        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: self.kfac_samples]
        x = take(train.inputs, rows)
        x = x.to(self.device) if isinstance(x, Tensor) else x
        self._update_factors(x)

    def _update_factors(self, x: Any) -> None:
        assert self.kfac is not None
        with torch.no_grad():
            logits = self.model(x) if self.loss_kind == "ce" else None
        self.kfac.update(x, logits)

    def _precondition(self) -> None:
        """Before each optimizer step (gradients computed): refresh the factors when due; ``grad <- G^-1 grad A^-1``."""
        if self.kfac is None:
            return
        due = self.kfac.updates == 0 or (self.kfac_update_every > 0 and self.steps % self.kfac_update_every == 0)
        if due and self.last_x is not None:
            self._update_factors(self.last_x)
        self.steps += 1
        deltas = dict(zip(self.model.names, self.model.delta, strict=True))
        for layer in self.linearized:
            weight, bias = deltas[f"{layer}.weight"], deltas.get(f"{layer}.bias")
            if weight.grad is None:
                continue
            gw, gb = self.kfac.precondition(layer, weight.grad, None if bias is None else bias.grad)
            weight.grad.copy_(gw)
            if bias is not None and gb is not None and bias.grad is not None:
                bias.grad.copy_(gb)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        if self.kfac is not None:
            precondition_before_step(optimizer, self._precondition)
        return optimizer


def lqf_sample_losses(logits: Tensor, y: Tensor, loss: str, target_scale: float) -> Tensor:
    """Per-sample LQF loss: ``||logits - alpha onehot(y)||^2`` (``mse``) or the cross-entropy (``ce``)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    target = target_scale * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return (logits - target).pow(2).sum(dim=1)
