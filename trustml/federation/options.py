"""Options of the federated strategies (``federation=fedavg|fedprox|fedadam|fedyogi``) and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trustml.errors import ConfigError
from trustml.federation.continual import ARRIVAL_ORDERS
from trustml.federation.partition import PARTITIONERS
from trustml.federation.selection import SELECTIONS, WEIGHTINGS

RUNTIMES = ("simulation", "flower")
CLIENT_LOOPS = ("auto", "lightning")
SETTINGS = ("static", "continual")


@dataclass
class FederationConfig:
    """Options shared by every federated strategy.

    Devices come from ``partition``: ``iid``, ``dirichlet_label`` (``dirichlet_alpha``) or
    ``dirichlet_quantity`` (``quantity_beta``) make ``num_devices`` devices; ``natural`` makes one device per
    value of the training data's ``group_column``. ``partition_seed`` fixes the partition. Each of
    ``rounds`` rounds selects ``clients_per_round`` devices (``selection``: uniform, activity with
    ``activity_exponent``, poisson; ``weighting``: samples or unbiased), trains each for ``local_epochs``
    (or ``local_steps``) and aggregates when at least ``min_clients`` answered within
    ``client_timeout_s``. A round that leaves the global model unchanged (every selected device failed, every
    update held NaN/inf, or fewer than ``min_clients`` usable updates) is a failed round: after
    ``max_failed_rounds`` failed rounds in a row the run stops with an error (null: never), and a run whose
    rounds all failed ends as failed too, never as a success with the untrained model.
    ``setting=continual`` spreads each device's data over ``num_periods`` with at most ``storage_cap`` samples
    kept (``arrival_order``: data or random).
    Two kinds of DP: ``dp_clip_norm`` clips each update and ``dp_noise_multiplier > 0`` turns on DP-FedAvg
    (client-level DP at the server: a device's whole data set is protected; needs ``selection=poisson``);
    ``dp_target_epsilon`` instead calibrates that noise multiplier before the first round so that ``rounds``
    rounds spend it at ``dp_delta``. A DP
    optimizer (``optimizer=dp_sgd|dp_adam``) gives example-level DP on each device instead: each device
    calibrates its noise so that its ``optimizer.target_epsilon`` lasts ``dp_device_rounds`` local fits (null:
    the 95% quantile of the number of rounds it is selected in, see :mod:`trustml.federation.participation`)
    and is selected no more once its budget is spent. ``seed`` (default: the run's seed) drives selection and
    server noise. The server state is saved after every round under ``<run dir>/federation/`` and, with
    ``resume``, picked up again.
    Devices without data and rounds with fewer devices than ``clients_per_round``: a configuration that forces
    them is refused before the run (``clients_per_round > num_devices``; ``num_devices`` above the number of
    training samples for the ``iid`` and Dirichlet partitions). Where they follow from the data (Dirichlet skew,
    a ``natural`` partition with fewer groups than ``clients_per_round``, continual periods in which few devices
    hold data yet, devices retired by their DP budget) the run goes on, a warning is logged and the results
    state them: ``federation/empty_devices`` (devices that hold no training data and are never selected) and
    ``federation/clamped_rounds`` (rounds in which fewer than ``clients_per_round`` devices were eligible, so every
    eligible one was taken; each round's ``eligible`` count is in ``rounds.jsonl``).
    ``runtime``: ``simulation`` (in process) or ``flower`` (Flower's engine, ``flower_num_cpus`` CPUs).
    ``client_loop``: ``auto`` trains clients in a Trainer-free loop where it can stand in for a Lightning fit
    (see :mod:`trustml.federation.local_loop`), ``lightning`` builds a Lightning Trainer for every client fit.
    """

    rounds: int = 20
    runtime: str = "simulation"
    partition: str = "iid"
    num_devices: int = 100
    dirichlet_alpha: float = 1.0
    quantity_beta: float = 1.0
    group_column: str = "device"
    partition_seed: int = 0
    clients_per_round: int = 10
    selection: str = "uniform"
    activity_exponent: float = 1.0
    weighting: str = "samples"
    local_epochs: int = 1
    local_steps: int | None = None
    min_clients: int = 1
    client_timeout_s: float | None = None
    max_failed_rounds: int | None = 3
    setting: str = "static"
    num_periods: int = 1
    storage_cap: int | None = None
    arrival_order: str = "data"
    server_lr: float = 1.0
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float = 0.0
    dp_target_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_device_rounds: int | None = None
    eval_every: int = 1
    seed: int | None = None
    resume: bool = True
    flower_num_cpus: int = 2
    client_loop: str = "auto"


@dataclass
class FedProxConfig(FederationConfig):
    """FedAvg options plus FedProx's proximal weight ``proximal_mu`` (Li et al. 2020)."""

    proximal_mu: float = 0.01


@dataclass
class FedAdamConfig(FederationConfig):
    """FedAvg options plus the server optimizer's ``server_lr``, ``beta1``, ``beta2`` and adaptivity ``tau``."""

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass
class FedYogiConfig(FedAdamConfig):
    """Options of FedYogi (same as FedAdam)."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"federation.{name} must be one of {list(allowed)}, got '{value}'")


def _at_least(name: str, value: float | None, low: float, *, optional: bool = False, strict: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(f"federation.{name} must be {bound}, got {value}")


def check_options(options: FederationConfig) -> None:
    """Raise :class:`ConfigError` naming the option and the fix when the federation options cannot work."""
    _choice("runtime", options.runtime, RUNTIMES)
    _choice("client_loop", options.client_loop, CLIENT_LOOPS)
    _choice("partition", options.partition, PARTITIONERS)
    _choice("selection", options.selection, SELECTIONS)
    _choice("weighting", options.weighting, WEIGHTINGS)
    _choice("setting", options.setting, SETTINGS)
    _choice("arrival_order", options.arrival_order, ARRIVAL_ORDERS)
    for name in ("rounds", "num_devices", "clients_per_round", "local_epochs", "num_periods", "eval_every"):
        _at_least(name, getattr(options, name), 1)
    _at_least("min_clients", options.min_clients, 0)
    _at_least("flower_num_cpus", options.flower_num_cpus, 1)
    _at_least("local_steps", options.local_steps, 1, optional=True)
    _at_least("max_failed_rounds", options.max_failed_rounds, 1, optional=True)
    _at_least("storage_cap", options.storage_cap, 1, optional=True)
    _at_least("dp_device_rounds", options.dp_device_rounds, 1, optional=True)
    for name in ("dirichlet_alpha", "quantity_beta", "server_lr"):
        _at_least(name, getattr(options, name), 0, strict=True)
    _at_least("client_timeout_s", options.client_timeout_s, 0, optional=True, strict=True)
    _at_least("dp_clip_norm", options.dp_clip_norm, 0, optional=True, strict=True)
    _at_least("dp_noise_multiplier", options.dp_noise_multiplier, 0)
    _at_least("activity_exponent", options.activity_exponent, 0)
    if options.partition != "natural" and options.clients_per_round > options.num_devices:
        raise ConfigError(
            f"federation.clients_per_round={options.clients_per_round} exceeds federation.num_devices="
            f"{options.num_devices}: a round cannot select more devices than there are; lower clients_per_round to "
            f"at most {options.num_devices} (or raise num_devices)"
        )
    if options.min_clients > options.clients_per_round:
        raise ConfigError(
            f"federation.min_clients={options.min_clients} exceeds federation.clients_per_round="
            f"{options.clients_per_round}, so no round could ever be aggregated; lower min_clients"
        )
    if options.setting == "static" and (options.num_periods != 1 or options.storage_cap is not None):
        raise ConfigError(
            "federation.num_periods / federation.storage_cap apply to the continual setting only; set "
            "federation.setting=continual or leave them at 1 / null"
        )
    _at_least("dp_target_epsilon", options.dp_target_epsilon, 0, optional=True, strict=True)
    if options.dp_target_epsilon is not None and options.dp_noise_multiplier > 0:
        raise ConfigError(
            "federation.dp_target_epsilon calibrates DP-FedAvg's noise multiplier; set it or "
            "federation.dp_noise_multiplier, not both"
        )
    if options.dp_noise_multiplier > 0 or options.dp_target_epsilon is not None:
        if options.dp_clip_norm is None:
            raise ConfigError("DP-FedAvg (federation.dp_noise_multiplier > 0 or dp_target_epsilon) needs "
                              "federation.dp_clip_norm set")
        if options.selection != "poisson":
            raise ConfigError(
                f"DP-FedAvg (federation.dp_noise_multiplier > 0) needs federation.selection=poisson, got "
                f"'{options.selection}': its accountant assumes each device joins a round independently with "
                f"probability clients_per_round / num_devices"
            )
        if not 0 < options.dp_delta < 1:
            raise ConfigError(f"federation.dp_delta must be in (0, 1), got {options.dp_delta}")
    if isinstance(options, FedAdamConfig):
        for name in ("beta1", "beta2"):
            value = getattr(options, name)
            if not 0 <= value < 1:
                raise ConfigError(f"federation.{name} must be in [0, 1), got {value}")
        _at_least("tau", options.tau, 0, strict=True)
    if isinstance(options, FedProxConfig):
        _at_least("proximal_mu", options.proximal_mu, 0)


def parse_options(config_class: type[FederationConfig], options: dict[str, Any]) -> FederationConfig:
    """``config_class(**options)`` checked with :func:`check_options`; unknown names are a ConfigError."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known - {"_target_"})
    if unknown:
        raise ConfigError(f"unknown federation option(s) {unknown}; valid options: {sorted(known)}")
    parsed = config_class(**{k: v for k, v in options.items() if k in known})
    check_options(parsed)
    return parsed
