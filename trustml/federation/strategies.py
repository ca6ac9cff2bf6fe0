"""``federation=fedavg | fedprox | fedadam | fedyogi``: federated training of the configured method.

Each plugin partitions the training split into clients, then runs rounds: select clients, let each train
the configured method with the configured optimizer on its own data (the client), aggregate the updates
into the global model (the server strategy), evaluate it on the test split, checkpoint. The runtime is the
in-process simulation (``runtime.engine=simulation``, default) or Flower (``runtime.engine=flower``). Each part
gets its own section of :class:`~trustml.federation.options.FederationConfig`. Written to
``<run dir>/federation/``: ``partition.json`` (partition summary statistics), ``partition.npz`` (per-client
arrays), ``rounds.jsonl`` (one record per round),
``server_state.pt`` (resume point); the final global model goes to ``checkpoints/last.ckpt``; the run's summary
(:func:`summarize`) is the :class:`~trustml.plugin.FitResult`'s ``results``.

A run never reports success for nothing: a model that a DP optimizer cannot train (a layer that mixes the
samples of a batch, e.g. BatchNorm) is refused before the first round, and a run whose rounds all failed (none
updated the global model) ends with :class:`~trustml.federation.rounds.ClientsKeepFailingError` (see
:mod:`trustml.federation.rounds`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError
from trustml.federation.checkpoint import STATE_FILE, run_state_path
from trustml.federation.client import ClientTrainer, client_callback_templates
from trustml.federation.flat_state import FlatLayout, get_flat, set_flat
from trustml.federation.options import (
    FedAdamConfig,
    FederationConfig,
    FedProxConfig,
    FedYogiConfig,
    PrivacyConfig,
    SelectionConfig,
)
from trustml.federation.participation import planned_rounds
from trustml.federation.partition import size_skew
from trustml.federation.population import ClientPopulation
from trustml.federation.rounds import RoundLoop, Transport, evaluate_model, lightning_test_metrics
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import FedAdamServer, FedAvgServer, FedYogiServer, ServerOptimizer
from trustml.federation.simulation import InProcessClients
from trustml.plugin import FederationPlugin, FitResult
from trustml.privacy.compat import check_per_sample_compatible
from trustml.privacy.dp_fedavg import calibrate_user_level_noise
from trustml.registry import plugin_class, register

log = logging.getLogger(__name__)


def summarize(
    history: list[dict[str, Any]],
    *,
    clients_per_round: int | None = None,
    empty_clients: int | None = None,
    floats_per_message: int | None = None,
) -> dict[str, float]:
    """Run-level numbers from the per-round records.

    With ``clients_per_round``, ``federation/clamped_rounds`` counts the rounds in which fewer clients than that
    were eligible; ``empty_clients`` (clients without data) is reported as ``federation/empty_clients``.
    Every other ``test_<name>`` metric of the last evaluated round (a method's own, e.g. ``test_slot_f1``) is
    reported as ``federation/final_test_<name>``. ``floats_per_message`` (the trainable float entries a model
    message carries; frozen weights never travel) gives ``federation/bytes_per_round``: the mean over rounds of
    ``4 * floats * (selected + answered)``, the global model sent to each selected client and each answer's update,
    as float32.
    """
    evaluated = [r for r in history if "test_acc" in r]
    summary: dict[str, float] = {
        "federation/rounds": float(len(history)),
        "federation/aggregated_rounds": float(sum(r["aggregated"] for r in history)),
        "federation/failed_clients": float(sum(r["failed"] for r in history)),
        "federation/timed_out_clients": float(sum(r["timed_out"] for r in history)),
        "federation/rejected_updates": float(sum(r["rejected"] for r in history)),
        "federation/mean_round_s": float(np.mean([r["round_s"] for r in history])) if history else 0.0,
    }
    if clients_per_round is not None:
        clamped = sum(r.get("eligible", clients_per_round) < clients_per_round for r in history)
        summary["federation/clamped_rounds"] = float(clamped)
    if empty_clients is not None:
        summary["federation/empty_clients"] = float(empty_clients)
    if evaluated:
        summary["federation/final_test_acc"] = float(evaluated[-1]["test_acc"])
        summary["federation/best_test_acc"] = float(max(r["test_acc"] for r in evaluated))
    # the method's own test metrics of the last evaluated round (e.g. test_slot_f1, test_perplexity)
    last = next((r for r in reversed(history) if any(k.startswith("test_") for k in r)), None)
    for key, value in (last or {}).items():
        if key.startswith("test_") and key not in ("test_acc", "test_loss") and isinstance(value, int | float):
            summary[f"federation/final_{key}"] = float(value)
    if floats_per_message is not None:
        summary["federation/floats_per_message"] = float(floats_per_message)
        messages = [r["selected"] + r["answered"] for r in history]
        summary["federation/bytes_per_round"] = 4.0 * floats_per_message * float(np.mean(messages)) if messages else 0.0
    if history and "retired" in history[-1]:
        summary["federation/clients_budget_spent"] = float(history[-1]["retired"])
    if history and "dp_epsilon" in history[-1]:
        summary["federation/dp_epsilon"] = float(history[-1]["dp_epsilon"])
    client_eps = [r["client_epsilon_max"] for r in history if "client_epsilon_max" in r]
    if client_eps:
        summary["federation/client_epsilon_max"] = float(max(client_eps))
    return summary


def write_partition(state_dir: Path, population: ClientPopulation) -> None:
    """``partition.json`` (the partition's summary statistics; every client listed too up to
    :data:`~trustml.federation.partition.LISTED_CLIENTS` clients) and ``partition.npz`` (the per-client arrays of
    :meth:`ClientPopulation.client_arrays`: a few bytes per client, read with ``numpy.load``)."""
    (state_dir / "partition.json").write_text(json.dumps(population.statistics(), indent=1) + "\n")
    with open(state_dir / "partition.npz", "wb") as handle:
        np.savez(handle, **population.client_arrays())


def warn_about_population(population: ClientPopulation, selection: SelectionConfig) -> None:
    """Log what the results will state: clients without data, and fewer clients with data than
    ``clients_per_round`` (each round then takes every eligible client)."""
    empty = population.empty_clients
    if empty:
        log.warning(
            "federation: %d of %d clients hold no training data (partition skew) and are never selected; "
            "reported as federation/empty_clients",
            empty,
            len(population),
        )
    holders = len(population) - empty
    if holders < selection.clients_per_round:
        log.warning(
            "federation: only %d clients hold data, fewer than federation.selection.clients_per_round=%d, so "
            "each round takes at most %d; reported as federation/clamped_rounds",
            holders,
            selection.clients_per_round,
            holders,
        )


def calibrated_privacy(
    privacy: PrivacyConfig, rounds: int, clients_per_round: int, final_sizes: np.ndarray
) -> PrivacyConfig:
    """``privacy`` with DP-FedAvg's noise multiplier calibrated for its ``target_epsilon`` over ``rounds`` rounds
    at the client rate of the last period, whose clients hold ``final_sizes`` samples (unchanged without a
    target)."""
    if privacy.target_epsilon is None:
        return privacy
    eligible = int((final_sizes > 0).sum())
    rate = min(clients_per_round, eligible) / max(eligible, 1)
    sigma = calibrate_user_level_noise(privacy.target_epsilon, privacy.delta, rate, rounds)
    log.info(
        "DP-FedAvg noise multiplier %.4f for epsilon %s over %d rounds at client rate %.4g",
        sigma,
        privacy.target_epsilon,
        rounds,
        rate,
    )
    return dataclasses.replace(privacy, noise_multiplier=sigma, target_epsilon=None)


#: input kinds whose models output class logits for ``batch["x"]`` and whose labels are class ids
CLASSIFICATION_INPUT_KINDS = ("features", "text")


def evaluate_method(
    method: pl.LightningModule, datamodule: TrustDataModule, loader: Any, make_trainer: Callable[..., pl.Trainer]
) -> dict[str, float]:
    """The test metrics of the global model in ``method``, under the method's own names (``test_<name>``).

    A method with ``evaluate_loader(loader)`` computes them itself (seq2seq, tagging); a classifier (features or
    text data) gets accuracy and cross-entropy (:func:`~trustml.federation.rounds.evaluate_model`); any other
    method (e.g. ``method=lm``) is tested by Lightning with its own ``test_step``, and what it logs as ``test/<name>``
    becomes ``test_<name>`` (:func:`~trustml.federation.rounds.lightning_test_metrics`).
    """
    own = getattr(method, "evaluate_loader", None)
    if own is not None:
        return own(loader)
    if datamodule.input_kind in CLASSIFICATION_INPUT_KINDS:
        return evaluate_model(method.model, loader)
    return lightning_test_metrics(method, datamodule, make_trainer)


def save_final_model(method: pl.LightningModule, path: Path) -> None:
    """The global model as a Lightning-style checkpoint (``state_dict`` with ``model.`` keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # entries that are not tensors: a model's extra state (e.g. the tokenizer a causal LM trained)
    state = {
        f"model.{k}": v.detach().cpu() if isinstance(v, torch.Tensor) else v
        for k, v in method.model.state_dict().items()
    }
    torch.save({"state_dict": state}, path)


class FederatedTraining(FederationPlugin):
    """Base of the federated plugins: FedAvg's client and server unless a subclass changes one of them.

    Built as ``Strategy(config)`` with ``config`` a :class:`FederationConfig` (or the strategy's subclass of it).
    """

    def __init__(self, config: FederationConfig) -> None:
        self.config = config

    # --- what the strategies differ in ---------------------------------------------------------------
    def make_server_optimizer(self) -> ServerOptimizer:
        """The server step applied to the aggregated update (FedAvg: ``w + eta Delta``)."""
        return FedAvgServer(self.config.server.lr)

    @property
    def proximal_mu(self) -> float:
        """Weight of FedProx's proximal term on the client (0: none)."""
        return 0.0

    # --- runner hooks --------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Before anything is built: Flower installed for ``runtime.engine=flower|deployment``; ``ckpt_path`` (when
        set) names a federated run's round checkpoint (its ``federation/server_state.pt`` or its run directory)."""
        federation = cfg.federation
        engine = federation.runtime.engine
        if engine in ("flower", "deployment"):
            needed = ("flwr", "ray") if engine == "flower" else ("flwr",)
            missing = [m for m in needed if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(
                    f"federation.runtime.engine={engine} needs {missing}; install 'flwr[simulation]' or use "
                    f"federation.runtime.engine=simulation"
                )
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path is not None and not run_state_path(ckpt_path).is_file():
            raise ConfigError(
                f"ckpt_path={ckpt_path}: no federated round checkpoint there; give a federated run's directory or its "
                f"federation/{STATE_FILE} (or leave ckpt_path unset to train from scratch)"
            )

    # --- the run -------------------------------------------------------------------------------------
    #: the Flower Grid of a deployed run's ServerApp (set by :mod:`trustml.federation.deployment` in the ServerApp's
    #: process, where :meth:`run` then serves the rounds over it); ``None`` everywhere else
    grid: Any = None

    def population(self, datamodule: TrustDataModule) -> ClientPopulation:
        """The client population of ``datamodule``'s training split (``federation.partition``)."""
        return ClientPopulation.from_datamodule(datamodule, self.config.partition)

    def client_trainer(
        self,
        method: pl.LightningModule,
        datamodule: TrustDataModule,
        make_trainer: Callable[..., pl.Trainer],
        population: ClientPopulation,
        callbacks: list[pl.Callback],
    ) -> ClientTrainer:
        """The clients' local training (the same on every runtime; ``callbacks``: the run's configured ones)."""
        config = self.config
        selection, client = config.selection, config.client
        return ClientTrainer(
            method,
            datamodule,
            make_trainer,
            client,
            proximal_mu=self.proximal_mu,
            callback_templates=client_callback_templates(callbacks),
            planned_fits=planned_rounds(
                population.sizes(population.num_periods - 1),
                config.rounds,
                selection.clients_per_round,
                selection.scheme,
                activity_exponent=selection.activity_exponent,
                fixed=client.dp_rounds,
            ),
        )

    def run(
        self,
        method: pl.LightningModule,
        datamodule: TrustDataModule,
        make_trainer: Callable[..., pl.Trainer],
        ckpt_path: str | Path | None = None,
    ) -> FitResult:
        """Train ``method`` federatedly (continuing the round checkpoint of ``ckpt_path`` when given); leave the
        final global model in it; return a Trainer for testing and the run's summary.

        With ``runtime.engine=deployment`` this process launches the run on a SuperLink with SuperNodes and waits
        for it (:func:`~trustml.federation.deployment.run_deployed`); the rounds run in the ServerApp's process,
        which calls this method again with :attr:`grid` set.
        """
        config = self.config
        partition, selection, client, runtime = config.partition, config.selection, config.client, config.runtime
        trainer = make_trainer()
        run_dir = Path(trainer.default_root_dir)
        state_dir = run_dir / "federation"
        state_dir.mkdir(parents=True, exist_ok=True)
        if getattr(method, "uses_per_sample_gradients", False):
            check_per_sample_compatible(method.model)  # else every client fails on its first step
        population = self.population(datamodule)
        layout = FlatLayout.of(method.model)
        if runtime.engine == "deployment" and self.grid is None:
            from trustml.federation.deployment import run_deployed

            history = run_deployed(run_dir, runtime, len(population), ckpt_path=ckpt_path)
            final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            method.model.load_state_dict({k.removeprefix("model."): v for k, v in final.items()})
            return FitResult(trainer, self.summary(history, population, layout))

        write_partition(state_dir, population)
        log.info(
            "federation: %d clients, %d rounds of %d clients (%s selection, %s setting)",
            len(population),
            config.rounds,
            selection.clients_per_round,
            selection.scheme,
            partition.setting,
        )
        warn_about_population(population, selection)

        final_sizes = population.sizes(population.num_periods - 1)
        clients = self.client_trainer(method, datamodule, make_trainer, population, trainer.callbacks)
        privacy = calibrated_privacy(config.privacy, config.rounds, selection.clients_per_round, final_sizes)
        seed = config.server.seed if config.server.seed is not None else torch.initial_seed()
        server = FederatedServer(
            get_flat(method.model, layout),
            self.make_server_optimizer(),
            selection=selection,
            server=config.server,
            privacy=privacy,
            seed=seed,
        )
        fingerprint = {
            "strategy": type(self).__name__,
            "num_parameters": layout.size,
            "num_clients": len(population),
            "partition": partition.kind,
            "selection": selection.scheme,
            "setting": partition.setting,
            "seed": seed,
        }
        source = None if ckpt_path is None else run_state_path(ckpt_path)
        test_loader = datamodule.test_dataloader()

        def evaluate(weights: torch.Tensor) -> dict[str, float]:
            set_flat(method.model, layout, weights)
            return evaluate_method(method, datamodule, test_loader, make_trainer)

        def make_loop(transport: Transport, sizes_at: Callable[[int], np.ndarray]) -> RoundLoop:
            return RoundLoop(
                server=server,
                rounds=config.rounds,
                num_periods=population.num_periods,
                sizes_at=sizes_at,
                transport=transport,
                evaluate=evaluate,
                eval_every=config.server.eval_every,
                state_dir=state_dir,
                fingerprint=fingerprint,
                max_failed_rounds=config.server.max_failed_rounds,
            )

        if runtime.engine == "deployment":  # this is the deployed run's ServerApp, serving over its Grid
            from trustml.federation.flower_runtime import serve

            served = serve(
                self.grid,
                make_loop,
                len(population),
                client.timeout_s,
                resume=runtime.resume,
                source=source,
                startup_timeout_s=runtime.startup_timeout_s,
            )
            served.require_training()
            history = served.history
        elif runtime.engine == "flower":
            from trustml.federation.flower_runtime import build_client_app, build_server_app, run_flower_simulation

            loops: list[RoundLoop] = []

            def make_flower_loop(transport: Transport, sizes_at: Callable[[int], np.ndarray]) -> RoundLoop:
                loops.append(make_loop(transport, sizes_at))
                return loops[-1]

            server_app = build_server_app(
                make_flower_loop, len(population), client.timeout_s, resume=runtime.resume, source=source
            )
            run_flower_simulation(
                server_app, build_client_app(clients, population), len(population), runtime.flower_num_cpus
            )
            if not loops:
                raise RuntimeError("the Flower ServerApp ended before its first round")
            loops[-1].require_training()  # the ServerApp may have swallowed the loop's own refusal
            history = loops[-1].history
        else:
            transport = InProcessClients(clients, population)
            loop = make_loop(transport, population.sizes)
            loop.client_state, loop.restore_client_state = transport.state_dict, transport.load_state_dict
            loop.resume(own=runtime.resume, source=source)
            history = loop.run()

        set_flat(method.model, layout, server.weights)
        save_final_model(method, run_dir / "checkpoints" / "last.ckpt")
        return FitResult(trainer, self.summary(history, population, layout))

    def summary(
        self, history: list[dict[str, Any]], population: ClientPopulation, layout: FlatLayout
    ) -> dict[str, Any]:
        """The run's results from its round records (:func:`summarize`) plus how unequal the devices' sample counts
        are (:func:`~trustml.federation.partition.size_skew`: ``federation/partition_gini``,
        ``federation/partition_top10_share``)."""
        summary: dict[str, Any] = summarize(
            history,
            clients_per_round=self.config.selection.clients_per_round,
            empty_clients=population.empty_clients,
            floats_per_message=layout.size,
        )
        skew = size_skew(population.partition.sizes)
        summary["federation/partition_gini"] = skew["gini"]
        summary["federation/partition_top10_share"] = skew["top10_share"]
        return summary


@register("federation", "fedavg", dataclass=FederationConfig)
class FedAvg(FederatedTraining):
    """FedAvg (McMahan et al. 2017); with federation.privacy.clip_norm + target_epsilon: DP-FedAvg (client-level DP).

    Local training on sampled clients, updates averaged by sample count.
    """


@register("federation", "fedprox", dataclass=FedProxConfig)
class FedProx(FederatedTraining):
    """FedProx (Li et al. 2020): FedAvg whose clients add ``(mu/2) ||w - w_global||^2`` to their loss."""

    config: FedProxConfig

    @property
    def proximal_mu(self) -> float:
        """``federation.client.proximal_mu``."""
        return float(self.config.client.proximal_mu)

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Also refuse a proximal term with an optimizer that computes its own per-sample gradients (DP-SGD)."""
        super().validate_config(cfg)
        optimizer = cfg.get("optimizer")
        if cfg.federation.client.proximal_mu > 0 and optimizer is not None:
            optimizer_cls = plugin_class("optimizer", optimizer)
            if optimizer_cls.needs_per_sample_gradients:  # type: ignore[attr-defined]
                raise ConfigError(
                    "federation=fedprox adds its proximal term to the loss gradient, but optimizer="
                    f"{optimizer_cls.__name__} computes its own per-sample gradients; use federation=fedavg with "
                    "this optimizer, or a non-DP optimizer with fedprox"
                )


@register("federation", "fedadam", dataclass=FedAdamConfig)
class FedAdam(FederatedTraining):
    """FedAdam (Reddi et al. 2021): Adam on the averaged client update at the server."""

    config: FedAdamConfig

    def make_server_optimizer(self) -> ServerOptimizer:
        s = self.config.server
        return FedAdamServer(s.lr, s.beta1, s.beta2, s.tau)


@register("federation", "fedyogi", dataclass=FedYogiConfig)
class FedYogi(FederatedTraining):
    """FedYogi (Reddi et al. 2021): Yogi on the averaged client update at the server."""

    config: FedYogiConfig

    def make_server_optimizer(self) -> ServerOptimizer:
        s = self.config.server
        return FedYogiServer(s.lr, s.beta1, s.beta2, s.tau)
