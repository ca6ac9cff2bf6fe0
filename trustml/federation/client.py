"""The federated client: local training of the configured method on one client's data.

All simulated clients share one method object (one model); a client loads the global weights into it,
trains it on its own rows for ``E`` local epochs or ``S`` local steps with the configured optimizer (DP-SGD
included), and reports its update ``w_local - w_global``. The training runs in
:class:`~trustml.federation.local_loop.ClientLoop`, which does a Lightning fit's work without building a
Trainer per client (``federation.client.loop=auto``), or in a fresh Lightning Trainer per client when the
loop cannot stand in for one (see :func:`~trustml.federation.local_loop.loop_refusal`; the reason is
logged once) or ``federation.client.loop=lightning`` asks for it. A method with fit-preparation hooks (e.g.
PC loading its old model) gets its first client fit through Lightning, so those hooks run once.

Callbacks that must run inside every local fit (e.g. a DP-SGD privacy accountant, so that each client
reports its own epsilon) declare the class attribute ``federated_scope = "client"``; the client runs a
fresh copy of each per fit and reports its ``final_results()`` among the client metrics. A client callback
with a ``planned_fits`` attribute (the accountant) is told how many fits its client plans for
(:mod:`trustml.federation.participation`). Other configured callbacks (checkpointing, metric tables) belong to
the server-side run and are not run per client.

A fit that takes no training step (e.g. its client's privacy budget is spent) raises
:class:`ClientDidNotTrain`: its unchanged weights are no update, and the round counts it as a failed client
instead of averaging it in.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader

from trustml.data.base import DataOptions, Split, TrustDataModule, take
from trustml.federation.flat_state import FlatBinding, FlatLayout, get_flat, set_flat
from trustml.federation.local_loop import ClientLoop, loop_refusal, needs_preparation, stateless, stateless_order
from trustml.federation.options import ClientConfig
from trustml.federation.proximal import ProximalTerm

TrainerFactory = Callable[..., pl.Trainer]

log = logging.getLogger(__name__)


class ClientTimeout(RuntimeError):
    """A client did not finish its local training within ``federation.client.timeout_s``."""


class ClientDidNotTrain(RuntimeError):
    """A client's local fit took no training step, so its "update" carries no training."""


@dataclass
class ClientUpdate:
    """What a client sends back: its update ``w_local - w_global``, sample count and metrics.

    ``callback_states`` is the client-side state of its ``federated_scope="client"`` callbacks (e.g. its
    privacy accountant), carried to the client's next round. The in-process simulation keeps it beside the
    clients; under Flower the server stores it as JSON between a client's rounds (and in its checkpoint) and
    sends it back with the client's next task, never using it for aggregation.
    """

    client: int
    num_examples: int
    delta: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    callback_states: list[dict[str, Any]] = field(default_factory=list)


class ClientDataModule(TrustDataModule):
    """One client's data: the given rows of the source's training split (its val/test splits unchanged).

    Batch size and the training batch sampler (e.g. DP-SGD's Poisson sampling) follow the source, so
    local training sees the client's data exactly as centralized training sees the whole split. A plain
    shuffling training loader draws nothing of its own (each pass seeds from the global RNG), so it is built
    once and returned again; a loader with a batch sampler (a new Poisson sampler seed per fit) is built anew
    for every fit.
    """

    def __init__(self, source: TrustDataModule, rows: np.ndarray) -> None:
        super().__init__(
            DataOptions(
                batch_size=source.batch_size,
                eval_batch_size=source.eval_batch_size,
                split_seed=source.config.split_seed,
            )
        )
        self.source_splits = source.splits
        self.rows = np.asarray(rows, dtype=np.int64)
        self.label_names = list(source.label_names)
        self.train_batch_sampler_factory = source.train_batch_sampler_factory
        self.input_kind = source.input_kind
        self.plain_train_loader: DataLoader | None = None
        self.row_tensor: Tensor | None = None

    def load_splits(self) -> dict[str, Split]:
        return {
            "train": self.source_splits["train"].subset(self.rows),
            "val": self.source_splits["val"],
            "test": self.source_splits["test"],
        }

    @property
    def whole_train_split(self) -> Split:
        """The source's whole training split, not this client's rows of it."""
        return self.source_splits["train"]

    def holds(self, rows: np.ndarray) -> bool:
        """Whether this module serves exactly ``rows`` (the very array it was built from, or equal rows)."""
        return self.rows is rows or np.array_equal(self.rows, rows)

    @property
    def direct_batching(self) -> bool:
        """Whether :meth:`direct_batches` stands in for the training loader: the source has no batch sampler of
        its own (e.g. DP-SGD's Poisson sampling), so the loader is a plain shuffling one; and rows to serve (an
        empty client goes through :meth:`setup`, which refuses it)."""
        return self.train_batch_sampler_factory is None and len(self.rows) > 0

    @property
    def num_train_batches(self) -> int:
        """Batches per pass of the plain training loader, ``ceil(len(rows) / batch_size)``."""
        return -(-len(self.rows) // self.batch_size)

    def direct_batches(self, scratch: torch.Generator) -> Iterator[dict[str, Any]]:
        """The batches one pass of the plain training loader yields, cut from the source's training split.

        Same draws of the global RNG and the same batches as iterating :meth:`train_dataloader` (its order over
        the client's rows, :func:`~trustml.federation.local_loop.stateless_order`), without building the rows'
        subset or a ``DataLoader``: a batch at positions ``order[b]`` of the subset is the source's rows
        ``rows[order[b]]``. The round cost of a device seen for the first time is then that of its batches.
        """
        source = self.source_splits["train"]
        if self.row_tensor is None:
            self.row_tensor = torch.from_numpy(self.rows)
        order = self.row_tensor[stateless_order(len(self.rows), scratch)]
        for rows in (order,) if len(order) <= self.batch_size else order.split(self.batch_size):
            yield {"x": take(source.inputs, rows), "y": source.labels[rows], "index": source.index[rows]}

    def train_dataloader(self) -> DataLoader:
        if self.plain_train_loader is not None:
            return self.plain_train_loader
        loader = super().train_dataloader()
        if stateless(loader):
            self.plain_train_loader = loader
        return loader


@contextmanager
def quiet_client_loop() -> Iterator[None]:
    """Silence the warning of a callback logging from a client loop, which has no Trainer to log into."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.trainer` reference is not registered.*")
        yield


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-Trainer banner, small-data and deprecation warnings (thousands of client fits)."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # catch_warnings resets "show once", so library deprecations would repeat for every client fit
            for category in (PossibleUserWarning, DeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def client_callback_templates(callbacks: Sequence[pl.Callback]) -> list[pl.Callback]:
    """The configured callbacks that run inside every client fit (``federated_scope == "client"``)."""
    return [cb for cb in callbacks if getattr(cb, "federated_scope", "server") == "client"]


class ClientTrainer:
    """Trains the shared ``method`` on one client's rows from the given global weights (see module doc).

    ``config`` is the ``federation.client`` section (:class:`~trustml.federation.options.ClientConfig`): its
    ``loop`` ``auto`` uses :class:`ClientLoop` where :func:`loop_refusal` allows it (``loop`` is then set after
    the first client), ``lightning`` always fits with a fresh Lightning Trainer. ``proximal_mu`` is FedProx's
    weight (0: FedAvg). ``planned_fits`` (per client) goes to every client callback that has a ``planned_fits``
    attribute (the DP accountant).

    What does not change between client fits is built once: each client's :class:`ClientDataModule` (rebuilt
    when its rows change, e.g. in a new continual period; the source's splits must not change during the
    run) and, for a CPU ``float32`` model, a :class:`FlatBinding` of the shared model, through which loading
    the global weights and reading the update are one vector operation each.
    """

    def __init__(
        self,
        method: pl.LightningModule,
        datamodule: TrustDataModule,
        make_trainer: TrainerFactory,
        config: ClientConfig | None = None,
        *,
        proximal_mu: float = 0.0,
        callback_templates: Sequence[pl.Callback] = (),
        planned_fits: np.ndarray | None = None,
    ) -> None:
        self.method = method
        self.datamodule = datamodule
        self.make_trainer = make_trainer
        self.config = config if config is not None else ClientConfig()
        self.proximal_mu = proximal_mu
        self.callback_templates = list(callback_templates)
        self.planned_fits = planned_fits
        self.layout = FlatLayout.of(method.model)
        self.loop: ClientLoop | None = None
        self.loop_decided = False
        self.prepared = not needs_preparation(method)
        self.client_data: dict[int, ClientDataModule] = {}
        self.binding: FlatBinding | None = None
        self.bindable = True

    def data_of(self, client: int, rows: np.ndarray) -> ClientDataModule:
        """``client``'s data module serving ``rows``: the one built before when its rows are the same."""
        data = self.client_data.get(client)
        if data is None or not data.holds(rows):
            data = self.client_data[client] = ClientDataModule(self.datamodule, rows)
        return data

    def load_global(self, weights: Tensor) -> None:
        """Load ``weights`` into the shared model: through its :class:`FlatBinding` (bound again when something
        replaced an entry's storage), or entry by entry when the model cannot be bound."""
        if self.bindable and (self.binding is None or not self.binding.intact()):
            self.binding = FlatBinding.bind(self.method.model, self.layout)
            self.bindable = self.binding is not None
        if self.binding is not None:
            self.binding.load(weights)
        else:
            set_flat(self.method.model, self.layout, weights)

    def update_from(self, weights: Tensor) -> Tensor:
        """The shared model's state minus ``weights``, the update of a fit that started from ``weights``."""
        if self.binding is not None and self.binding.intact():
            return self.binding.vector - weights
        return get_flat(self.method.model, self.layout) - weights

    def lightning_callbacks(self, client_callbacks: list[pl.Callback]) -> list[pl.Callback]:
        """The callbacks of a Lightning client fit: the client callbacks, FedProx's term, the client timer."""
        callbacks: list[pl.Callback] = list(client_callbacks)
        if self.proximal_mu > 0:
            callbacks.append(ProximalTerm(self.proximal_mu))
        if self.config.timeout_s is not None:
            callbacks.append(Timer(duration=timedelta(seconds=self.config.timeout_s), verbose=False))
        return callbacks

    def choose_loop(self, client_callbacks: list[pl.Callback]) -> ClientLoop | None:
        """The Trainer-free loop when it can stand in for this run's client fits (decided once), else ``None``.

        A method with fit-preparation hooks gets ``None`` until one Lightning client fit has succeeded.
        """
        if not self.loop_decided:
            self.loop_decided = True
            if self.config.loop == "auto":
                with quiet_lightning():
                    probe = self.make_trainer(**self.trainer_overrides(self.lightning_callbacks(client_callbacks)))
                reason = loop_refusal(self.method, probe, client_callbacks)
                if reason is None:
                    self.loop = ClientLoop(probe.strategy.root_device, self.config, proximal_mu=self.proximal_mu)
                else:
                    log.info("federation: each client fit builds a Lightning Trainer: %s", reason)
        return self.loop if self.prepared else None

    def trainer_overrides(self, callbacks: list[pl.Callback]) -> dict[str, Any]:
        """Trainer arguments of one local fit: its length, its callbacks, no validation/logging/checkpoints."""
        max_epochs, max_steps = self.config.fit_length
        return {
            "max_epochs": max_epochs,
            "max_steps": max_steps,
            "min_epochs": 0,
            "callbacks": callbacks,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
        }

    def train(
        self, client: int, rows: np.ndarray, global_weights: Tensor, callback_states: Sequence[dict[str, Any]] = ()
    ) -> ClientUpdate:
        """Fit on ``rows`` starting from ``global_weights``; raise :class:`ClientTimeout` past the deadline.

        ``callback_states`` (from the client's previous :class:`ClientUpdate`) restores its client-side
        callbacks, so e.g. a client's privacy loss composes over all the rounds it took part in.
        """
        self.load_global(global_weights)
        client_callbacks = [copy.deepcopy(cb) for cb in self.callback_templates]
        for cb, state in zip(client_callbacks, callback_states, strict=False):
            cb.load_state_dict(state)
        if self.planned_fits is not None:
            for cb in client_callbacks:
                if hasattr(cb, "planned_fits"):
                    cb.planned_fits = int(self.planned_fits[client])
        loop = self.choose_loop(client_callbacks)
        data = self.data_of(client, rows)
        start = time.perf_counter()
        if loop is not None:
            with quiet_client_loop() if client_callbacks else nullcontext():
                result = loop.fit(self.method, data, client_callbacks)
            loss, steps = result.train_loss, result.steps
        else:
            with quiet_lightning():
                trainer = self.make_trainer(**self.trainer_overrides(self.lightning_callbacks(client_callbacks)))
                trainer.fit(self.method, datamodule=data)
            logged = trainer.callback_metrics.get("train/loss")
            loss, steps = (None if logged is None else float(logged)), trainer.global_step
            self.prepared = True
        if steps == 0:
            spent = [cb for cb in client_callbacks if getattr(cb, "budget_spent", False)]
            raise ClientDidNotTrain(
                f"client {client} took no training step"
                + (" because its privacy budget (optimizer.target_epsilon) is spent" if spent else "")
            )
        seconds = time.perf_counter() - start
        timeout_s = self.config.timeout_s
        if timeout_s is not None and seconds > timeout_s:
            raise ClientTimeout(f"client {client} took {seconds:.1f}s > federation.client.timeout_s={timeout_s}")
        metrics: dict[str, float] = {"seconds": seconds}
        if loss is not None:
            metrics["train_loss"] = loss
        for cb in client_callbacks:
            final = getattr(cb, "final_results", None)
            if final is not None:
                metrics.update({k: float(v) for k, v in final().items() if isinstance(v, int | float | torch.Tensor)})
        delta = self.update_from(global_weights)
        return ClientUpdate(
            client=client,
            num_examples=len(rows),
            delta=delta,
            metrics=metrics,
            callback_states=[cb.state_dict() for cb in client_callbacks],
        )
