"""``federation=fedavg | fedprox | fedadam | fedyogi``: federated training of the configured method.

Each plugin partitions the training split into clients, then runs rounds: select clients, let each train
the configured method with the configured optimizer on its own data (the client), aggregate the updates
into the global model (the server strategy), evaluate it on the test split, checkpoint. The runtime is the
in-process simulation (``runtime=simulation``, default) or Flower (``runtime=flower``). Written to
``<run dir>/federation/``: ``partition.json`` (client statistics), ``rounds.jsonl`` (one record per
round), ``server_state.pt`` (resume point); the final global model goes to ``checkpoints/last.ckpt``.

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
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from trustml.data.base import TrustDataModule
from trustml.errors import ConfigError
from trustml.federation.client import LocalTrainer, client_callback_templates
from trustml.federation.population import ClientPopulation
from trustml.federation.flat_state import FlatLayout, get_flat, set_flat
from trustml.federation.options import (
    FedAdamConfig,
    FederationConfig,
    FedProxConfig,
    FedYogiConfig,
    parse_options,
)
from trustml.federation.participation import planned_rounds
from trustml.federation.rounds import RoundLoop, Transport, evaluate_model
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import FedAdamServer, FedAvgServer, FedYogiServer, ServerOptimizer
from trustml.federation.server_privacy import calibrate_user_level_noise
from trustml.federation.simulation import InProcessClients
from trustml.optim.base import PerSampleGradientOptimizer
from trustml.privacy.compat import check_per_sample_compatible
from trustml.registry import register, resolve_target

log = logging.getLogger(__name__)


class FederationResults(pl.Callback):
    """Carries a federated run's summary (final/best test accuracy, faults, DP epsilon) into results.json."""

    def __init__(self) -> None:
        self.results: dict[str, float] = {}

    def final_results(self) -> dict[str, float]:
        """The summary the federated runtime filled in."""
        return dict(self.results)


def summarize(
    history: list[dict[str, Any]], *, clients_per_round: int | None = None, empty_clients: int | None = None
) -> dict[str, float]:
    """Run-level numbers from the per-round records.

    With ``clients_per_round``, ``federation/clamped_rounds`` counts the rounds in which fewer clients than that
    were eligible; ``empty_clients`` (clients without data) is reported as ``federation/empty_clients``.
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
    if history and "retired" in history[-1]:
        summary["federation/clients_budget_spent"] = float(history[-1]["retired"])
    if history and "dp_epsilon" in history[-1]:
        summary["federation/dp_epsilon"] = float(history[-1]["dp_epsilon"])
    client_eps = [r["client_epsilon_max"] for r in history if "client_epsilon_max" in r]
    if client_eps:
        summary["federation/client_epsilon_max"] = float(max(client_eps))
    return summary


def warn_about_population(population: ClientPopulation, options: FederationConfig) -> None:
    """Log what the results will state: clients without data, and fewer clients with data than
    ``clients_per_round`` (each round then takes every eligible client)."""
    empty = population.empty_clients
    if empty:
        log.warning("federation: %d of %d clients hold no training data (partition skew) and are never selected; "
                    "reported as federation/empty_clients", empty, len(population))
    holders = len(population) - empty
    if holders < options.clients_per_round:
        log.warning("federation: only %d clients hold data, fewer than federation.clients_per_round=%d, so each "
                    "round takes at most %d; reported as federation/clamped_rounds", holders,
                    options.clients_per_round, holders)


class FederatedTraining:
    """Base of the federated plugins: FedAvg's client and server unless a subclass changes one of them."""

    config_class: ClassVar[type[FederationConfig]] = FederationConfig

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(self.config_class, options)

    # --- what the strategies differ in ---------------------------------------------------------------
    def make_server_optimizer(self) -> ServerOptimizer:
        """The server step applied to the aggregated update (FedAvg: ``w + eta Delta``)."""
        return FedAvgServer(self.options.server_lr)

    @property
    def proximal_mu(self) -> float:
        """Weight of FedProx's proximal term on the client (0: none)."""
        return 0.0

    # --- runner hooks --------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """Check the federation options and their combination with the optimizer before anything is built."""
        node = OmegaConf.to_container(cfg.federation, resolve=True)
        options = parse_options(cls.config_class, dict(node))  # type: ignore[arg-type]
        optimizer_target = (cfg.get("optimizer") or {}).get("_target_")
        if isinstance(options, FedProxConfig) and options.proximal_mu > 0 and optimizer_target:
            optimizer_cls = resolve_target(str(optimizer_target))
            if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, PerSampleGradientOptimizer):
                raise ConfigError(
                    "federation=fedprox adds its proximal term to the loss gradient, but optimizer="
                    f"{optimizer_cls.__name__} computes its own per-sample gradients; use federation=fedavg with "
                    "this optimizer, or a non-DP optimizer with fedprox"
                )
        if options.runtime == "flower":
            missing = [m for m in ("flwr", "ray") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(
                    f"federation.runtime=flower needs {missing}; install 'flwr[simulation]' or use "
                    f"federation.runtime=simulation"
                )

    @classmethod
    def runtime_callbacks(cls, cfg: DictConfig, datamodule: Any) -> list[pl.Callback]:
        """A :class:`FederationResults` that the run fills in, so its summary reaches results.json."""
        return [FederationResults()]

    # --- the run -------------------------------------------------------------------------------------
    def run(
        self, method: pl.LightningModule, datamodule: TrustDataModule, make_trainer: Callable[..., pl.Trainer]
    ) -> pl.Trainer:
        """Train ``method`` federatedly; leave the final global model in it; return a Trainer for testing."""
        options = self.options
        trainer = make_trainer()
        run_dir = Path(trainer.default_root_dir)
        state_dir = run_dir / "federation"
        state_dir.mkdir(parents=True, exist_ok=True)
        if getattr(method, "uses_per_sample_gradients", False):
            check_per_sample_compatible(method.model)  # else every client fails on its first step
        population = ClientPopulation.from_datamodule(datamodule, options)
        (state_dir / "partition.json").write_text(json.dumps(population.statistics(), indent=1) + "\n")
        log.info("federation: %d clients, %d rounds of %d clients (%s selection, %s setting)", len(population),
                 options.rounds, options.clients_per_round, options.selection, options.setting)
        warn_about_population(population, options)

        local = LocalTrainer(
            method, datamodule, make_trainer, local_epochs=options.local_epochs, local_steps=options.local_steps,
            proximal_mu=self.proximal_mu, timeout_s=options.client_timeout_s,
            callback_templates=client_callback_templates(trainer.callbacks), client_loop=options.client_loop,
            planned_fits=planned_rounds(
                population.sizes(population.num_periods - 1), options.rounds, options.clients_per_round,
                options.selection, activity_exponent=options.activity_exponent, fixed=options.dp_client_rounds,
            ),
        )
        if options.dp_target_epsilon is not None:
            options = self._calibrated_user_level_noise(options, population)
        layout = FlatLayout.of(method.model)
        seed = options.seed if options.seed is not None else torch.initial_seed()
        server = FederatedServer(get_flat(method.model, layout), self.make_server_optimizer(), options, seed)
        fingerprint = {
            "strategy": type(self).__name__,
            "num_parameters": layout.size,
            "num_clients": len(population),
            "partition": options.partition,
            "selection": options.selection,
            "setting": options.setting,
            "seed": seed,
        }
        test_loader = datamodule.test_dataloader()

        def evaluate(weights: torch.Tensor) -> dict[str, float]:
            set_flat(method.model, layout, weights)
            return evaluate_model(method.model, test_loader)

        def make_loop(transport: Transport, sizes_at: Callable[[int], np.ndarray]) -> RoundLoop:
            return RoundLoop(
                server=server, rounds=options.rounds, num_periods=population.num_periods, sizes_at=sizes_at,
                transport=transport, evaluate=evaluate, eval_every=options.eval_every, state_dir=state_dir,
                fingerprint=fingerprint, max_failed_rounds=options.max_failed_rounds,
            )

        if options.runtime == "flower":
            from trustml.federation.flower_runtime import build_client_app, build_server_app, run_flower_simulation

            loops: list[RoundLoop] = []

            def make_flower_loop(transport: Transport, sizes_at: Callable[[int], np.ndarray]) -> RoundLoop:
                loops.append(make_loop(transport, sizes_at))
                return loops[-1]

            server_app = build_server_app(make_flower_loop, len(population), options.client_timeout_s,
                                          resume=options.resume)
            run_flower_simulation(server_app, build_client_app(local, population), len(population),
                                  options.flower_num_cpus)
            if not loops:
                raise RuntimeError("the Flower ServerApp ended before its first round")
            loops[-1].require_training()  # the ServerApp may have swallowed the loop's own refusal
            history = loops[-1].history
        else:
            clients = InProcessClients(local, population)
            loop = make_loop(clients, population.sizes)
            loop.client_state, loop.restore_client_state = clients.state_dict, clients.load_state_dict
            if options.resume:
                loop.resume()
            history = loop.run()

        set_flat(method.model, layout, server.weights)
        self._save_final_model(method, run_dir / "checkpoints" / "last.ckpt")
        for callback in trainer.callbacks:
            if isinstance(callback, FederationResults):
                callback.results = summarize(history, clients_per_round=options.clients_per_round,
                                             empty_clients=population.empty_clients)
        return trainer

    @staticmethod
    def _calibrated_user_level_noise(options: FederationConfig, population: ClientPopulation) -> FederationConfig:
        """``options`` with DP-FedAvg's noise multiplier calibrated for ``dp_target_epsilon`` over all rounds."""
        eligible = int((population.sizes(population.num_periods - 1) > 0).sum())
        rate = min(options.clients_per_round, eligible) / max(eligible, 1)
        sigma = calibrate_user_level_noise(options.dp_target_epsilon, options.dp_delta, rate, options.rounds)
        log.info("DP-FedAvg noise multiplier %.4f for epsilon %s over %d rounds at client rate %.4g",
                 sigma, options.dp_target_epsilon, options.rounds, rate)
        return dataclasses.replace(options, dp_noise_multiplier=sigma, dp_target_epsilon=None)

    @staticmethod
    def _save_final_model(method: pl.LightningModule, path: Path) -> None:
        """The global model as a Lightning-style checkpoint (``state_dict`` with ``model.`` keys)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f"model.{k}": v.detach().cpu() for k, v in method.model.state_dict().items()}
        torch.save({"state_dict": state}, path)


@register("federation", "fedavg", dataclass=FederationConfig)
class FedAvg(FederatedTraining):
    """FedAvg (McMahan et al. 2017); with federation.dp_clip_norm + dp_target_epsilon: DP-FedAvg (client-level DP).

    Local training on sampled clients, updates averaged by sample count.
    """


@register("federation", "fedprox", dataclass=FedProxConfig)
class FedProx(FederatedTraining):
    """FedProx (Li et al. 2020): FedAvg whose clients add ``(mu/2) ||w - w_global||^2`` to their loss."""

    config_class = FedProxConfig

    @property
    def proximal_mu(self) -> float:
        """``federation.proximal_mu``."""
        return float(self.options.proximal_mu)  # type: ignore[attr-defined]


@register("federation", "fedadam", dataclass=FedAdamConfig)
class FedAdam(FederatedTraining):
    """FedAdam (Reddi et al. 2021): Adam on the averaged client update at the server."""

    config_class = FedAdamConfig

    def make_server_optimizer(self) -> ServerOptimizer:
        o = self.options
        return FedAdamServer(o.server_lr, o.beta1, o.beta2, o.tau)  # type: ignore[attr-defined]


@register("federation", "fedyogi", dataclass=FedYogiConfig)
class FedYogi(FederatedTraining):
    """FedYogi (Reddi et al. 2021): Yogi on the averaged client update at the server."""

    config_class = FedYogiConfig

    def make_server_optimizer(self) -> ServerOptimizer:
        o = self.options
        return FedYogiServer(o.server_lr, o.beta1, o.beta2, o.tau)  # type: ignore[attr-defined]
