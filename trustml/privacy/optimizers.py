"""DP-SGD and DP-Adam: per-sample clipped, Gaussian-noised updates (Abadi et al., 2016).

Each logical batch (Poisson-sampled, see :class:`trustml.privacy.sampling.PoissonBatchSampler`) gives the
update direction ``(sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / L`` with ``L`` the expected batch size
(``clip_C``: flat, per-layer or automatic, :mod:`trustml.privacy.mechanism`),
which the wrapped ``torch.optim`` rule (SGD with momentum, or Adam) then applies. Per-sample gradients
come layer by layer from activations and output gradients (ghost norms and book-keeping: never
materialized for linear and embedding layers; ``torch.func`` for other layers), or from a whole-model
``torch.func`` ``vmap(grad)``. A logical batch is processed in physical chunks of
``max_physical_batch_size`` samples, so a large batch fits in memory (virtual batches). Sigma and ``L`` come
with the optimizer when it is built (a :class:`~trustml.privacy.engine.NoisePlan`, which the privacy engine
computes before; :mod:`trustml.privacy.engine`). On several data-parallel processes (DDP) the plan says how many:
each process sums its shard's clipped gradients, process 0 alone adds the noise and the sums are all-reduced, so
the update is the one-process update of the global batch (:mod:`trustml.privacy.distributed`).

Secrecy of the randomness: amplification by subsampling (what the accountant counts) assumes that nobody
learns which samples each batch holds, and the Gaussian mechanism that nobody learns the noise. By default
both come from OS entropy (``secrets``/``torch.Generator.seed``), so nothing the run directory records (the
run seed, the config) reproduces them; ``optimizer.deterministic=true`` derives them from the run seed
instead, for reproducible tests, and then the guarantee does not hold against whoever reads the run directory.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trustml.cpu_allocator import MAX_MMAP_THRESHOLD
from trustml.errors import ConfigError, TrustMLError
from trustml.privacy.batching import Batch, batch_size, split_batch
from trustml.privacy.compat import check_per_sample_compatible
from trustml.privacy.distributed import all_reduce_sum, check_process_group
from trustml.privacy.engine import NoisePlan
from trustml.privacy.mechanism import add_clipped_sum_, add_gaussian_noise_
from trustml.privacy.options import MIXED_PRECISION_REFUSAL, DPAdamConfig, DPOptimizerConfig, DPSGDConfig
from trustml.privacy.per_sample import MaterializedGradients, PerSampleResult, SampleLossFn
from trustml.privacy.per_sample_layerwise import check_layerwise_covers, layerwise_per_sample_gradients
from trustml.privacy.per_sample_vmap import vmap_per_sample_gradients

PER_SAMPLE_ENGINES = {"vmap": vmap_per_sample_gradients, "layerwise": layerwise_per_sample_gradients}

Params = Iterable[nn.Parameter] | Iterable[dict[str, Any]]


class PrivacyBudgetSpent(TrustMLError):
    """A noisy step was requested after the privacy budget (``target_epsilon``) was spent."""


def refuse_autocast() -> None:
    """Raise :class:`ConfigError` inside a ``torch.autocast`` region (CPU or CUDA): mixed precision is refused."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            raise ConfigError(MIXED_PRECISION_REFUSAL.format(where=f"torch.autocast on {device}"))


class PerSampleGradientOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """An optimizer that needs per-sample gradients (e.g. DP-SGD) and so does its own backward pass.

    A method whose optimizer plugin says ``needs_per_sample_gradients`` calls, instead of ``loss.backward()``,
    :meth:`private_gradients` with the model, the method's per-sample loss ``sample_losses(logits, batch) -> [B]``
    and the batch; then ``step()`` (through Lightning, so the trainer counts the step) and ``zero_grad()``.
    """

    @abstractmethod
    def private_gradients(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """Set each trainable parameter's ``.grad`` from ``batch``; return detached ``(logits, mean loss)``."""

    def private_step(
        self, model: nn.Module, sample_losses: SampleLossFn, batch: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """:meth:`private_gradients`, then the update and ``zero_grad`` (for use outside a Lightning loop)."""
        logits, loss = self.private_gradients(model, sample_losses, batch)
        self.step()
        self.zero_grad(set_to_none=True)
        return logits, loss


class DPOptimizer(PerSampleGradientOptimizer):
    """Private step shared by :class:`DPSGDOptimizer` and :class:`DPAdamOptimizer` (update rule: the torch base).

    ``plan`` (sigma and the expected batch size) is fixed when the optimizer is built; an optimizer built without
    one (e.g. to inspect its type) refuses to step.
    """

    def _init_privacy(self, options: DPOptimizerConfig, plan: NoisePlan | None) -> None:
        self.options = options
        self.plan = plan
        self.noise_seed = options.noise_seed
        if self.noise_seed is None and options.deterministic:
            # drawn from the global generator, which the runner seeds with the run seed: reproducible, and
            # different for every optimizer built in a run (e.g. each federated client's)
            self.noise_seed = int(torch.randint(0, 2**62, ()))
        #: Number of noisy updates applied so far (the privacy engine's step hook accounts them).
        self.noisy_steps = 0
        #: Set by the privacy engine's step hook when one more step would exceed ``target_epsilon``.
        self.budget_spent = False
        self._generators: dict[torch.device, torch.Generator] = {}
        self._noise_scratch: dict[Any, Tensor] = {}  # add_gaussian_noise_'s buffers, kept across steps
        self._kept_sums: dict[str, Tensor] = {}  # the clipped sums kept across steps (:meth:`_zeroed_sums`)
        self._checked_models: set[int] = set()

    @property
    def noise_multiplier(self) -> float | None:
        """Sigma of every step: the plan's, else the configured one (``None`` until calibrated)."""
        return self.plan.noise_multiplier if self.plan is not None else self.options.noise_multiplier

    # --- the private step ----------------------------------------------------------------------------
    def private_gradients(self, model: nn.Module, sample_losses: SampleLossFn, batch: Batch) -> tuple[Tensor, Tensor]:
        """Noisy mean of clipped per-sample gradients of ``batch`` (in physical chunks) into each ``.grad``.

        ``g = (sum_i clip(g_i, C) + N(0, sigma^2 C^2 I)) / L`` with ``L`` the plan's expected batch size (never the
        realised batch size ``|B|``, which depends on the private Poisson draw); returns detached (logits, mean
        loss) of this process's batch. Under DDP ``batch`` is this process's shard of the global Poisson batch and
        the sum runs over the global batch (:meth:`_noisy_sum`).
        """
        if self.budget_spent:
            raise PrivacyBudgetSpent(
                f"the privacy budget optimizer.target_epsilon={self.options.target_epsilon} is spent; training must "
                f"stop (remove trainer.min_steps, which forces it to go on)"
            )
        if self.plan is None:
            raise ConfigError(
                "the DP optimizer was built without a noise plan (noise multiplier and expected batch size L = qN: "
                "the noisy mean divides by L, never by the realised batch size, which depends on the private draw). "
                "In a Trainer, PrivacyAccountantCallback (the DP plugin's runtime_callbacks) plans it before the "
                "optimizer is built; outside one pass plan=NoisePlan(noise_multiplier, expected_batch_size)"
            )
        refuse_autocast()
        params = self._trainable_params(model)
        self._check_model(model, params, sample_losses, batch)
        total: dict[str, Tensor] = {}
        logits, losses = [], []
        options = self.options
        for chunk in split_batch(batch, options.max_physical_batch_size):  # at least one chunk, maybe empty
            result = self._per_sample(model, params, sample_losses, chunk)
            if not total:  # after the first backward: the sums are never alive together with its activations
                total = self._zeroed_sums(params)
            add_clipped_sum_(result.grads, total, options.max_grad_norm, options.clipping, options.clipping_gamma)
            logits.append(result.logits)
            losses.append(result.losses)
            del result  # this chunk's layer inputs and output gradients, before the next chunk's forward
        noisy = self._noisy_sum(total)
        for name, p in params.items():
            p.grad = noisy[name].div_(self.plan.expected_batch_size)  # the step's own tensors: divided in place
        self.noisy_steps += 1
        all_losses = torch.cat(losses)
        return torch.cat(logits), all_losses.mean() if all_losses.numel() else all_losses.sum()

    #: Sums of at least this many bytes on the CPU are kept from one step to the next: glibc maps every allocation
    #: over its mmap threshold (32 MiB at most, which ``cpu_allocator: retain`` sets) fresh from the OS, which
    #: zero-fills it page by page at each step (a 30,522 x 384 word-embedding table: 11,000 page faults a step).
    #: Smaller ones are allocated at each step, after the first backward, and freed with ``p.grad``: they come
    #: from the heap and do not raise the step's peak memory, which is reached during the backward.
    KEEP_SUMS_FROM_BYTES = MAX_MMAP_THRESHOLD

    def _zeroed_sums(self, params: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
        """One zeroed buffer per parameter for the step's clipped sum: those of at least
        :attr:`KEEP_SUMS_FROM_BYTES` on the CPU are the same tensors every step, the others new.

        The buffer becomes ``p.grad`` (divided in place), so a ``p.grad`` of a kept buffer held by reference from one
        step is overwritten by the next step's, as with ``zero_grad(set_to_none=False)``.
        """
        sums = {}
        for name, p in params.items():
            kept = self._kept_sums.get(name)
            if kept is not None and kept.shape == p.shape and kept.dtype == p.dtype and kept.device == p.device:
                sums[name] = kept.zero_()
                continue
            sums[name] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if p.device.type == "cpu" and sums[name].nbytes >= self.KEEP_SUMS_FROM_BYTES:
                self._kept_sums[name] = sums[name]
            else:
                self._kept_sums.pop(name, None)
        return sums

    def _noisy_sum(self, total: dict[str, Tensor]) -> Mapping[str, Tensor]:
        """``sum_i clip(g_i) + N(0, sigma^2 C^2 I)`` over the step's whole (global) batch, the noise added in place
        to ``total`` (this step's own sums).

        Across the plan's ``processes`` (DDP), ``total`` is this process's shard sum: process 0 alone adds the
        noise, then the sums are all-reduced, so every process holds the same noisy sum with the noise drawn once
        (:mod:`trustml.privacy.distributed`).
        """
        std = self.plan.noise_multiplier * self.options.max_grad_norm  # type: ignore[union-attr]
        processes = self.plan.processes  # type: ignore[union-attr]
        if processes == 1:
            return add_gaussian_noise_(total, std, self._generator(total), self._noise_scratch)
        rank = check_process_group(processes)
        if rank == 0:
            add_gaussian_noise_(total, std, self._generator(total), self._noise_scratch)
        return all_reduce_sum(total)

    def _per_sample(
        self, model: nn.Module, params: dict[str, nn.Parameter], sample_losses: SampleLossFn, batch: Batch
    ) -> PerSampleResult:
        if batch_size(batch) == 0:
            with torch.no_grad():
                logits = model(batch["x"])
            empty = {name: p.new_zeros(0, *p.shape) for name, p in params.items()}
            return PerSampleResult(MaterializedGradients(empty), logits, logits.new_zeros(0))
        return PER_SAMPLE_ENGINES[self.options.per_sample_gradients](model, params, sample_losses, batch)

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
        if self.options.per_sample_gradients == "layerwise":
            if batch_size(batch) == 0:
                return
            first_chunk = next(split_batch(batch, self.options.max_physical_batch_size))
            check_layerwise_covers(model, params, sample_losses, first_chunk)
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


class DPSGDOptimizer(DPOptimizer, torch.optim.SGD):
    """DP-SGD: SGD on clipped, noised per-sample gradients."""

    def __init__(self, params: Params, options: DPSGDConfig, plan: NoisePlan | None = None) -> None:
        torch.optim.SGD.__init__(
            self,
            params,
            lr=options.lr,
            momentum=options.momentum,
            nesterov=options.nesterov,
            weight_decay=options.weight_decay,
        )
        self._init_privacy(options, plan)


class DPAdamOptimizer(DPOptimizer, torch.optim.Adam):
    """DP-Adam: Adam on clipped, noised per-sample gradients."""

    def __init__(self, params: Params, options: DPAdamConfig, plan: NoisePlan | None = None) -> None:
        torch.optim.Adam.__init__(
            self,
            params,
            lr=options.lr,
            betas=(options.beta1, options.beta2),
            eps=options.eps,
            weight_decay=options.weight_decay,
        )
        self._init_privacy(options, plan)
