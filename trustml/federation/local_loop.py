"""A Trainer-free local-training loop for simulated clients: one Lightning fit's work without the Trainer.

Building and running a Lightning Trainer costs about 100 ms per fit (most of it constructing the Trainer),
while a small model's local epoch on one client's rows costs a few milliseconds, so with thousands of
client fits the Trainer would be the simulation's cost. :class:`ClientLoop` does what a Lightning fit of a
:class:`~trustml.methods.base.ClassificationMethod` does, in the same order and with the same random draws
(so it gives the same client update), and nothing else:

.. code-block:: text

    callbacks' setup(); configure_optimizers()   # an SGD/Adam/AdamW is built once and reset per fit
    for epoch e until local_epochs (or until local_steps steps):
        sampler.set_epoch(e)                      # as Lightning: the loader's sampler and batch_sampler.sampler
        for batch in train loader:                # a plain shuffling loader: one permutation, as its sampler draws
            zero_grad (not with a DP optimizer)
            logits, loss = method.training_loss(batch, optimizer)   # the method's own step (as training_step):
                                                   # prepare_batch (e.g. PC's cached old logits), then the loss, or
                                                   # a DP optimizer's per-sample gradients in .grad
            DP optimizer:  step; zero_grad
            otherwise:     loss.backward(); FedProx: ((mu / 2) ||w - w_global||^2).backward(); step

Client callbacks that can run here (:func:`runs_in_client_loop`: those that declare
``client_loop_ready = True``, e.g. the DP accountant) get their training hooks called with a :class:`ClientFitView` in
place of the Trainer. :func:`loop_refusal` says why a method, trainer configuration or callback needs a
real Lightning fit instead (e.g. a method with its own ``training_step``, gradient accumulation or clipping,
mixed precision); :class:`~trustml.federation.client.ClientTrainer` then uses one.

What a fit would rebuild but does not change between fits is kept: one optimizer object
(:meth:`ClientLoop.optimizer_for`) and one scratch generator for the loader's permutations
(:func:`shuffled_order`), so that a client with one small batch costs little more than its training step. A fit
without client callbacks (nothing then reads the loader) on a :class:`DirectBatches` data module (a federated
client's rows) builds no loader at all: its batches are cut from the rows with the loader's own draws.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol, cast
from weakref import WeakKeyDictionary

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from trustml.data.base import SplitDataset, TrustDataModule
from trustml.errors import ConfigError
from trustml.federation.options import ClientConfig
from trustml.federation.proximal import ProximalTerm, proximal_term
from trustml.methods.base import ClassificationMethod

#: LightningModule hooks that change what one training step does; a method overriding one needs Lightning.
STEP_HOOKS = (
    "training_step",
    "optimizer_step",
    "optimizer_zero_grad",
    "backward",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
    "configure_callbacks",
    "train_dataloader",
)
#: torch optimizers whose whole state between steps is ``optimizer.state``, created at their first step: one
#: object with that state cleared and its hyperparameters restored is a fresh one.
REUSABLE_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
#: LightningModule hooks that prepare a fit (e.g. PC loads its old model); run once by a first Lightning fit.
PREPARATION_HOOKS = ("prepare_data", "setup", "on_fit_start", "on_fit_end", "teardown")


def _overridden(method: pl.LightningModule, hooks: Sequence[str]) -> list[str]:
    return [name for name in hooks if getattr(type(method), name) is not getattr(ClassificationMethod, name)]


def runs_in_client_loop(callback: pl.Callback) -> bool:
    """Whether ``callback`` works on a :class:`ClientFitView`: it declares ``client_loop_ready = True``."""
    return bool(getattr(callback, "client_loop_ready", False))


def needs_preparation(method: pl.LightningModule) -> bool:
    """Whether ``method`` has fit-preparation hooks (:data:`PREPARATION_HOOKS`) for a first Lightning fit."""
    return bool(_overridden(method, PREPARATION_HOOKS))


def loop_refusal(method: pl.LightningModule, probe: pl.Trainer, client_callbacks: Sequence[pl.Callback]) -> str | None:
    """Why :class:`ClientLoop` cannot stand in for a fit of ``method`` by ``probe``; ``None`` when it can.

    ``probe`` is a Trainer built with a client fit's arguments (never run); ``client_callbacks`` are the
    callbacks of a client fit other than the FedProx term and the client timer (the loop does those itself).
    """
    if not isinstance(method, ClassificationMethod):
        return f"{type(method).__name__} is not a ClassificationMethod"
    overridden = _overridden(method, STEP_HOOKS)
    if overridden:
        return f"{type(method).__name__} overrides {overridden}"
    if not isinstance(method.configure_optimizers(), torch.optim.Optimizer):
        return "configure_optimizers() returns more than one optimizer (e.g. a learning-rate scheduler)"
    settings = {
        "accumulate_grad_batches": (probe.accumulate_grad_batches, 1),
        "gradient_clip_val": (probe.gradient_clip_val or 0, 0),
        "precision": (probe.precision, "32-true"),
        "limit_train_batches": (probe.limit_train_batches, 1.0),
        "overfit_batches": (probe.overfit_batches, 0),
        "min_steps": (probe.fit_loop.min_steps or 0, 0),
    }
    changed = [f"trainer.{name}={value}" for name, (value, plain) in settings.items() if value != plain]
    if changed:
        return f"the trainer sets {changed}"
    if not isinstance(probe.strategy, SingleDeviceStrategy):
        return f"the trainer uses {type(probe.strategy).__name__}, not one device"
    own = {id(cb) for cb in client_callbacks}
    extra = [
        type(cb).__name__ for cb in probe.callbacks if id(cb) not in own and not isinstance(cb, Timer | ProximalTerm)
    ]
    if extra:
        return f"the trainer adds callbacks {extra}"
    unready = [type(cb).__name__ for cb in client_callbacks if not runs_in_client_loop(cb)]
    if unready:
        return f"client callbacks {unready} need a Trainer (declare client_loop_ready = True if they do not)"
    return None


class DirectBatches(Protocol):
    """A data module that can serve its training batches without a ``DataLoader`` (a federated client's rows):
    when :attr:`direct_batching` holds, :meth:`direct_batches` yields what iterating ``train_dataloader()`` would
    (same batches, same draws of the global RNG), and :attr:`num_train_batches` is that loader's length."""

    @property
    def direct_batching(self) -> bool: ...

    @property
    def num_train_batches(self) -> int: ...

    def direct_batches(self, scratch: torch.Generator) -> Iterator[dict[str, Any]]: ...


@dataclass
class ClientFitView:
    """What client callbacks see of the fit in place of a Trainer (the attributes the DP accountant reads)."""

    datamodule: TrustDataModule
    train_dataloader: DataLoader | None  # None: the batches were cut without a loader (a fit without callbacks)
    optimizers: list[torch.optim.Optimizer]
    max_epochs: int
    max_steps: int
    num_training_batches: int
    current_epoch: int = 0
    global_step: int = 0
    should_stop: bool = False
    fit_loop: Any = field(default_factory=lambda: SimpleNamespace(min_epochs=0, min_steps=0))


@dataclass
class LoopResult:
    """Steps taken and the batch-size-weighted mean training loss of the last epoch (``None``: no batch)."""

    steps: int
    train_loss: float | None


def loader_batches(loader: DataLoader, scratch: torch.Generator | None = None) -> Iterator[Any]:
    """The batches a single-process map-style ``loader`` yields, with the same random draws, minus its bookkeeping.

    Like ``iter(loader)``: one base seed drawn from ``loader.generator`` (the global RNG when ``None``) when
    iteration starts, then ``collate_fn(dataset.__getitems__(indices))`` per batch of the batch sampler. A
    :func:`plain_shuffling` loader's batches are cut from its :func:`shuffled_order` (drawn with ``scratch``
    where it needs a generator of its own), and a :class:`~trustml.data.base.SplitDataset` (not a subclass) gets
    each batch's indices as one tensor. A loader with workers, or whose dataset lacks ``__getitems__``, is
    iterated as itself.
    """
    dataset, collate = loader.dataset, loader.collate_fn
    if loader.num_workers > 0 or loader.batch_sampler is None or not hasattr(dataset, "__getitems__"):
        yield from loader
        return
    if not plain_shuffling(loader):
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        for indices in loader.batch_sampler:
            yield collate(dataset.__getitems__(indices))
        return
    order = shuffled_order(loader, scratch)
    batch_size = loader.batch_sampler.batch_size
    batches = (order,) if len(order) <= batch_size else order.split(batch_size)
    as_tensor = type(dataset) is SplitDataset  # its __getitems__ takes an index tensor as it is
    for indices in batches:
        yield collate(dataset.__getitems__(indices if as_tensor else indices.tolist()))


def plain_shuffling(loader: DataLoader) -> bool:
    """Whether ``loader`` is a single-process ``shuffle=True``, ``drop_last=False`` loader: a ``BatchSampler``
    cutting one ``RandomSampler`` permutation (without replacement) into consecutive batches.

    Decided once per loader (a loader's sampler, batch sampler and workers are fixed when it is built), as a
    client's loader is iterated in every round it takes part in.
    """
    known = _PLAIN_SHUFFLING.get(loader)
    if known is None:
        batch_sampler, sampler = loader.batch_sampler, loader.sampler
        known = _PLAIN_SHUFFLING[loader] = (
            loader.num_workers == 0
            and type(batch_sampler) is BatchSampler
            and not batch_sampler.drop_last
            and batch_sampler.sampler is sampler
            and type(sampler) is RandomSampler
            and not sampler.replacement
            and sampler.num_samples == len(sampler.data_source)
        )
    return known


_PLAIN_SHUFFLING: WeakKeyDictionary[DataLoader, bool] = WeakKeyDictionary()


def stateless(loader: DataLoader) -> bool:
    """Whether iterating ``loader`` again draws as a freshly built copy would: a :func:`plain_shuffling` loader
    without generators of its own, whose every pass seeds from the global RNG."""
    return plain_shuffling(loader) and loader.generator is None and loader.sampler.generator is None


def shuffled_order(loader: DataLoader, scratch: torch.Generator | None = None) -> torch.Tensor:
    """What iterating a :func:`plain_shuffling` ``loader`` draws before its first batch: its base seed, then the
    order in which it visits its dataset (the permutation its ``RandomSampler`` draws).

    ``RandomSampler`` permutes with its own generator, or with a new one (here ``scratch`` reseeded, the same
    thing) seeded from one draw of the global RNG, and ``BatchSampler`` cuts that permutation into consecutive
    batches. Without generators of their own, the base seed and the sampler's seed are two consecutive draws
    of the global RNG, taken as one. ``tests/federation/test_client_reuse.py`` checks the batches and the
    global RNG state afterwards against iterating the loader.
    """
    sampler = loader.sampler
    if sampler.generator is None and loader.generator is None:
        return stateless_order(len(sampler.data_source), scratch)
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # the loader's base seed
    generator = sampler.generator
    if generator is None:
        generator = scratch if scratch is not None else torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
    return torch.randperm(len(sampler.data_source), generator=generator)


def stateless_order(n: int, scratch: torch.Generator | None = None) -> torch.Tensor:
    """The order in which a :func:`stateless` loader over ``n`` samples visits them, drawn as iterating it draws:
    its base seed and its sampler's seed, two consecutive draws of the global RNG taken as one, then the sampler's
    permutation with a generator (``scratch``, reseeded) seeded from the second."""
    generator = scratch if scratch is not None else torch.Generator()
    _, seed = torch.empty(2, dtype=torch.int64).random_().tolist()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


def epoch_mean(losses: list[torch.Tensor], sizes: list[int]) -> float:
    """Lightning's epoch mean of a logged loss, ``sum_b loss_b * size_b / sum_b size_b`` (``nan`` for no samples),
    read back once per epoch rather than once per step."""
    count = sum(sizes)
    if count == 0:
        return float("nan")
    if len(losses) == 1:
        return float(losses[0])
    weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
    return float(torch.stack(losses).double() @ weights) / count


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` where Lightning does: on the loader's sampler and its batch sampler's sampler."""
    samplers = {id(s): s for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)) if s is not None}
    for sampler in samplers.values():
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


class ClientLoop:
    """Runs one client's local training of a :class:`ClassificationMethod` without a Trainer (see module doc).

    ``device`` (a ``torch.device``) is where training runs (the probe trainer's root device); the method is moved
    there for the fit and back afterwards, as Lightning's single-device strategy does. ``config`` is the
    ``federation.client`` section (local epochs or steps, timeout); ``proximal_mu`` is FedProx's weight.
    """

    def __init__(self, device: torch.device, config: ClientConfig, *, proximal_mu: float = 0.0) -> None:
        self.device, self.config, self.proximal_mu = device, config, proximal_mu
        self.reusable: tuple[ClassificationMethod, torch.optim.Optimizer, list[dict[str, Any]]] | None = None
        self.scratch = torch.Generator()

    def optimizer_for(self, method: ClassificationMethod) -> torch.optim.Optimizer:
        """A fresh optimizer of ``method`` (``configure_optimizers()``), without building one per fit where it can.

        The base class's ``configure_optimizers`` gives the same optimizer for every fit (the configured factory
        on the trainable parameters, which a federated run fixes with its layout); one of
        :data:`REUSABLE_OPTIMIZERS` is built once and reset before every later fit: state cleared,
        hyperparameters as built.
        """
        if self.reusable is not None and self.reusable[0] is method:
            _, optimizer, hyperparameters = self.reusable
            optimizer.state.clear()
            for group, values in zip(optimizer.param_groups, hyperparameters, strict=True):
                group.update(values)
            return optimizer
        optimizer = method.configure_optimizers()
        if (
            type(method).configure_optimizers is ClassificationMethod.configure_optimizers
            and type(optimizer) in REUSABLE_OPTIMIZERS
        ):
            hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            self.reusable = (method, optimizer, hyperparameters)
        return optimizer

    def fit(self, method: ClassificationMethod, data: TrustDataModule, callbacks: Sequence[pl.Callback]) -> LoopResult:
        """Train ``method`` on ``data``'s training split; ``callbacks`` get their training hooks."""
        start = time.perf_counter()
        # without callbacks nothing reads the loader: a data module that cuts its batches directly does so
        direct = not callbacks and getattr(data, "direct_batching", False)
        loader: DataLoader | None = None
        if direct:
            num_batches = cast(DirectBatches, data).num_train_batches
        else:
            data.setup("fit")
            loader = data.train_dataloader()
            num_batches = len(loader)
        home = method.device
        _detach_trainer(method)
        if home != self.device:
            method.to(self.device)
        try:
            if method.uses_per_sample_gradients and self.proximal_mu > 0:
                raise ConfigError(
                    "federation=fedprox adds its proximal term to the loss gradient, but a DP optimizer computes its "
                    "own per-sample gradients; use federation=fedavg with it, or a non-DP optimizer with fedprox"
                )
            max_epochs, max_steps = self.config.fit_length
            view = ClientFitView(
                data, loader, [], max_epochs=max_epochs, max_steps=max_steps, num_training_batches=num_batches
            )
            hooks = _Hooks(callbacks, view, method)
            hooks("setup", stage="fit")  # as in a Lightning fit: setup, then configure_optimizers, then on_fit_start
            optimizer = self.optimizer_for(method)
            view.optimizers.append(optimizer)
            step = _Step(method, optimizer, self.proximal_mu)
            hooks("on_fit_start")
            hooks("on_train_start")
            train_loss: float | None = None
            on_cpu = self.device.type == "cpu"
            while not self._done(view, start):
                if loader is not None:
                    set_sampler_epoch(loader, view.current_epoch)
                hooks("on_train_epoch_start")
                losses, sizes = [], []
                batches = (
                    loader_batches(loader, self.scratch)
                    if loader is not None
                    else cast(DirectBatches, data).direct_batches(self.scratch)
                )
                for batch_idx, raw in enumerate(batches):
                    batch = raw if on_cpu else move_data_to_device(raw, self.device)
                    hooks("on_train_batch_start", batch, batch_idx)
                    loss, outputs = step(batch)
                    losses.append(loss)
                    sizes.append(len(batch["y"]))
                    view.global_step += 1
                    hooks("on_train_batch_end", outputs, batch, batch_idx)
                    if self._batch_done(view, start):
                        break
                if losses:
                    train_loss = epoch_mean(losses, sizes)
                view.current_epoch += 1
                hooks("on_train_epoch_end")
            hooks("on_train_end")
            hooks("on_fit_end")
            hooks("teardown", stage="fit")
        finally:
            if home != self.device:
                method.to(home)
        return LoopResult(view.global_step, train_loss)

    def _timed_out(self, start: float) -> bool:
        timeout_s = self.config.timeout_s
        return timeout_s is not None and time.perf_counter() - start >= timeout_s

    def _batch_done(self, view: ClientFitView, start: float) -> bool:
        """After a step: the step budget is used, a callback asked to stop, or the client ran out of time."""
        if self._timed_out(start):
            view.should_stop = True
        return view.should_stop or (view.max_steps != -1 and view.global_step >= view.max_steps)

    def _done(self, view: ClientFitView, start: float) -> bool:
        """Before an epoch: no batches, the step or epoch budget is used, or something asked to stop."""
        if view.num_training_batches == 0 or self._batch_done(view, start):
            return True
        return view.max_epochs != -1 and view.current_epoch >= view.max_epochs


def _detach_trainer(method: pl.LightningModule) -> None:
    """Detach a Trainer left from an earlier fit: the callbacks' ``pl_module.log()`` calls are then dropped, as a
    client fit's logs are, instead of reaching that finished Trainer."""
    try:
        method.trainer  # noqa: B018 - raises when no Trainer is attached
    except RuntimeError:
        return
    method.trainer = None


class _Step:
    """One optimizer step of a method on a batch, as its ``training_step`` and Lightning's optimization do it.

    The loss (or, with a per-sample-gradient optimizer, the gradients) comes from the method's own
    :meth:`~trustml.methods.base.ClassificationMethod.training_loss`; this adds what Lightning's optimization adds
    around it (``zero_grad``, ``backward``, FedProx's term as :class:`ProximalTerm` adds it, ``step``). Returns the
    detached mean training loss and what ``training_step`` would have returned (the loss as Lightning's
    ``{"loss": ...}``; ``None`` for a per-sample-gradient optimizer, which the method steps itself).
    """

    def __init__(self, method: ClassificationMethod, optimizer: torch.optim.Optimizer, proximal_mu: float) -> None:
        self.method, self.optimizer, self.mu = method, optimizer, proximal_mu
        self.per_sample = method.uses_per_sample_gradients
        # FedProx anchors at the weights the fit starts from (the global model the client received)
        self.params = [p for p in method.parameters() if p.requires_grad] if proximal_mu > 0 else []
        self.anchors = [p.detach().clone() for p in self.params]

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        method, optimizer = self.method, self.optimizer
        if self.per_sample:
            _, loss = method.training_loss(batch, optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach(), None
        optimizer.zero_grad()
        _, loss = method.training_loss(batch, optimizer)
        loss.backward()
        if self.params:
            proximal_term(self.params, self.anchors, self.mu).backward()
        optimizer.step()
        detached = loss.detach()
        return detached, {"loss": detached}


class _Hooks:
    """Calls one training hook on every client callback with the fit view and the method."""

    def __init__(self, callbacks: Sequence[pl.Callback], view: ClientFitView, method: pl.LightningModule) -> None:
        self.callbacks, self.view, self.method = list(callbacks), view, method

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(self.view, self.method, *args, **kwargs)
