"""Options of the federated strategies (``federation=fedavg|fedprox|fedadam|fedyogi``), one dataclass per part.

:class:`FederationConfig` holds the number of ``rounds`` and one section per part of the federation, each given
only to that part: ``partition`` (the client population), ``selection`` (which clients train in a round),
``client`` (local training), ``server`` (aggregation and the server optimizer), ``privacy`` (DP-FedAvg) and
``runtime`` (in-process simulation or Flower; resuming a killed run). Overrides name the section:
``federation.client.local_epochs=2``, ``federation.privacy.target_epsilon=3``. Each section checks its own
options in ``__post_init__``; :class:`FederationConfig` checks the combinations across sections. A section may
also be given as a plain mapping (e.g. ``FederationConfig(client={"local_epochs": 2})``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from trustml.errors import ConfigError
from trustml.federation.continual import ARRIVAL_ORDERS
from trustml.federation.partition import HEAVY_TAILS, PARTITIONERS
from trustml.federation.selection import SELECTIONS, WEIGHTINGS

SETTINGS = ("static", "continual")
ENGINES = ("simulation", "flower", "deployment")
CLIENT_LOOPS = ("auto", "lightning")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"federation.{name} must be one of {list(allowed)}, got '{value}'")


def _at_least(name: str, value: float | None, low: float, *, optional: bool = False, strict: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(f"federation.{name} must be {bound}, got {value}")


@dataclass
class PartitionConfig:
    """The client population: which training rows each client holds in each period.

    ``kind``: ``iid``, ``dirichlet_label`` (``dirichlet_alpha``) or ``dirichlet_quantity`` (``quantity_beta``)
    make ``num_clients`` clients; ``natural`` makes one client per value of the training data's ``group_column``.
    ``heavy_tailed`` gives ``num_clients`` devices heavy-tailed sample counts (``heavy_tail``: ``lognormal`` with
    sigma ``skew``, or ``zipf`` with exponent ``skew``) over IID samples; ``heavy_tailed_natural`` deals the groups of
    ``group_column`` whole to ``num_clients`` devices with heavy-tailed probabilities
    (:mod:`trustml.federation.partition`). ``seed`` fixes the partition. ``setting=continual`` spreads each client's
    data over ``num_periods`` with at most ``storage_cap`` samples kept (``arrival_order``: data or random), the data
    of period ``t`` proportional to ``arrival_growth^t`` (activity growing over time when > 1).
    """

    kind: str = "iid"
    num_clients: int = 100
    dirichlet_alpha: float = 1.0
    quantity_beta: float = 1.0
    group_column: str = "device"
    seed: int = 0
    setting: str = "static"
    num_periods: int = 1
    storage_cap: int | None = None
    arrival_order: str = "data"
    heavy_tail: str = "lognormal"
    skew: float = 1.0
    arrival_growth: float = 1.0

    def __post_init__(self) -> None:
        _choice("partition.kind", self.kind, PARTITIONERS)
        _choice("partition.setting", self.setting, SETTINGS)
        _choice("partition.arrival_order", self.arrival_order, ARRIVAL_ORDERS)
        _at_least("partition.num_clients", self.num_clients, 1)
        _at_least("partition.num_periods", self.num_periods, 1)
        _at_least("partition.storage_cap", self.storage_cap, 1, optional=True)
        _at_least("partition.dirichlet_alpha", self.dirichlet_alpha, 0, strict=True)
        _at_least("partition.quantity_beta", self.quantity_beta, 0, strict=True)
        _choice("partition.heavy_tail", self.heavy_tail, HEAVY_TAILS)
        _at_least("partition.skew", self.skew, 0)
        _at_least("partition.arrival_growth", self.arrival_growth, 0, strict=True)
        if self.setting == "static" and self.arrival_growth != 1.0:
            raise ConfigError(
                "federation.partition.arrival_growth applies to the continual setting only; set "
                "federation.partition.setting=continual or leave it at 1"
            )
        if self.setting == "static" and (self.num_periods != 1 or self.storage_cap is not None):
            raise ConfigError(
                "federation.partition.num_periods / federation.partition.storage_cap apply to the continual setting "
                "only; set federation.partition.setting=continual or leave them at 1 / null"
            )


@dataclass
class SelectionConfig:
    """Which clients train in a round: ``clients_per_round`` of them drawn by ``scheme`` (uniform, activity with
    ``activity_exponent``, poisson), their updates weighted by ``weighting`` (samples or unbiased); see
    :mod:`trustml.federation.selection`."""

    clients_per_round: int = 10
    scheme: str = "uniform"
    activity_exponent: float = 1.0
    weighting: str = "samples"

    def __post_init__(self) -> None:
        _choice("selection.scheme", self.scheme, SELECTIONS)
        _choice("selection.weighting", self.weighting, WEIGHTINGS)
        _at_least("selection.clients_per_round", self.clients_per_round, 1)
        _at_least("selection.activity_exponent", self.activity_exponent, 0)


@dataclass
class ClientConfig:
    """A client's local training: ``local_epochs`` (or ``local_steps``) within ``timeout_s``.

    ``loop``: ``auto`` trains clients in a Trainer-free loop where it can stand in for a Lightning fit (see
    :mod:`trustml.federation.local_loop`), ``lightning`` builds a Lightning Trainer for every client fit. With a
    DP optimizer (``optimizer=dp_sgd|dp_adam``, example-level DP) each client calibrates its noise so that its
    ``optimizer.target_epsilon`` lasts ``dp_rounds`` local fits (null: the 95% quantile of the number of rounds
    it is selected in, see :mod:`trustml.federation.participation`) and is selected no more once it is spent.
    """

    local_epochs: int = 1
    local_steps: int | None = None
    timeout_s: float | None = None
    dp_rounds: int | None = None
    loop: str = "auto"

    @property
    def fit_length(self) -> tuple[int, int]:
        """``(max_epochs, max_steps)`` of one local fit as Lightning counts them (``-1``: no bound)."""
        return (-1, self.local_steps) if self.local_steps is not None else (self.local_epochs, -1)

    def __post_init__(self) -> None:
        _choice("client.loop", self.loop, CLIENT_LOOPS)
        _at_least("client.local_epochs", self.local_epochs, 1)
        _at_least("client.local_steps", self.local_steps, 1, optional=True)
        _at_least("client.dp_rounds", self.dp_rounds, 1, optional=True)
        _at_least("client.timeout_s", self.timeout_s, 0, optional=True, strict=True)


@dataclass
class FedProxClientConfig(ClientConfig):
    """A FedAvg client plus FedProx's proximal weight ``proximal_mu`` (Li et al. 2020)."""

    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("client.proximal_mu", self.proximal_mu, 0)


@dataclass
class ServerConfig:
    """Aggregation: a round steps the global model (server learning rate ``lr``) when at least ``min_clients``
    usable updates came back; the global model is tested every ``eval_every`` rounds.

    A round that leaves the global model unchanged (every selected client failed, every update held NaN/inf, or
    fewer than ``min_clients`` usable updates) is a failed round: after ``max_failed_rounds`` failed rounds in a
    row the run stops with an error (null: never), and a run whose rounds all failed ends as failed too. ``seed``
    (default: the run's seed) drives the server's client selection and DP-FedAvg noise.
    """

    lr: float = 1.0
    min_clients: int = 1
    max_failed_rounds: int | None = 3
    eval_every: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        _at_least("server.lr", self.lr, 0, strict=True)
        _at_least("server.min_clients", self.min_clients, 0)
        _at_least("server.max_failed_rounds", self.max_failed_rounds, 1, optional=True)
        _at_least("server.eval_every", self.eval_every, 1)


@dataclass
class AdaptiveServerConfig(ServerConfig):
    """The server of FedAdam/FedYogi: learning rate ``lr``, moments ``beta1``/``beta2``, adaptivity ``tau``."""

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"federation.server.{name} must be in [0, 1), got {value}")
        _at_least("server.tau", self.tau, 0, strict=True)


@dataclass
class PrivacyConfig:
    """Client-level DP at the server (DP-FedAvg): a client's whole data set is protected.

    ``clip_norm`` clips each update; ``noise_multiplier > 0`` adds Gaussian noise to their sum (DP-FedAvg, needs
    ``selection.scheme=poisson``); ``target_epsilon`` instead calibrates that noise multiplier before the first
    round so that ``rounds`` rounds spend it at ``delta``.
    """

    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    target_epsilon: float | None = None
    delta: float = 1e-5

    @property
    def enabled(self) -> bool:
        """Whether DP-FedAvg is on (a noise multiplier or a target epsilon)."""
        return self.noise_multiplier > 0 or self.target_epsilon is not None

    def __post_init__(self) -> None:
        _at_least("privacy.clip_norm", self.clip_norm, 0, optional=True, strict=True)
        _at_least("privacy.noise_multiplier", self.noise_multiplier, 0)
        _at_least("privacy.target_epsilon", self.target_epsilon, 0, optional=True, strict=True)
        if self.target_epsilon is not None and self.noise_multiplier > 0:
            raise ConfigError(
                "federation.privacy.target_epsilon calibrates DP-FedAvg's noise multiplier; set it or "
                "federation.privacy.noise_multiplier, not both"
            )
        if self.enabled:
            if self.clip_norm is None:
                raise ConfigError(
                    "DP-FedAvg (federation.privacy.noise_multiplier > 0 or target_epsilon) needs "
                    "federation.privacy.clip_norm set"
                )
            if not 0 < self.delta < 1:
                raise ConfigError(f"federation.privacy.delta must be in (0, 1), got {self.delta}")


@dataclass
class RuntimeConfig:
    """How rounds run: ``engine`` ``simulation`` (in process), ``flower`` (Flower's simulation engine,
    ``flower_num_cpus`` CPUs) or ``deployment`` (Flower's deployment engine: a SuperLink and one SuperNode per
    client, each its own process, driven by ``flwr run``; see :mod:`trustml.federation.deployment`).

    ``deployment`` starts the SuperLink and the SuperNodes on 127.0.0.1 itself when ``superlink`` is null, else it
    submits the run to the SuperLink at ``superlink`` (``host:port``, insecure HTTP), whose SuperNodes were started
    on their machines beforehand. ``startup_timeout_s`` bounds the wait for every SuperNode to connect,
    ``deployment_timeout_s`` the whole deployed run. The server state is saved after every round under
    ``<run dir>/federation/``; with ``resume`` a run started again in the same run directory (e.g. after it was
    killed) continues from its last round. (The top-level ``ckpt_path`` continues another run's round checkpoint in
    a new run directory.)"""

    engine: str = "simulation"
    flower_num_cpus: int = 2
    resume: bool = True
    superlink: str | None = None
    startup_timeout_s: float = 120.0
    deployment_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        _choice("runtime.engine", self.engine, ENGINES)
        _at_least("runtime.flower_num_cpus", self.flower_num_cpus, 1)
        _at_least("runtime.startup_timeout_s", self.startup_timeout_s, 0, strict=True)
        _at_least("runtime.deployment_timeout_s", self.deployment_timeout_s, 0, strict=True)
        if self.superlink is not None:
            host, _, port = self.superlink.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(
                    f"federation.runtime.superlink must be the SuperLink's host:port (e.g. 10.0.0.5:9093), got "
                    f"'{self.superlink}'; or null to start a SuperLink and SuperNodes on 127.0.0.1"
                )
            if self.engine != "deployment":
                raise ConfigError(
                    "federation.runtime.superlink applies to federation.runtime.engine=deployment only; set the engine "
                    "or leave superlink null"
                )


def _section(value: object, section: type) -> object:
    """``value`` as an instance of ``section`` (a mapping gives its keyword arguments)."""
    if isinstance(value, section):
        return value
    if isinstance(value, Mapping):
        return section(**value)
    raise ConfigError(f"a federation section must be a {section.__name__} or a mapping, got {type(value).__name__}")


@dataclass
class FederationConfig:
    """Options shared by every federated strategy: ``rounds`` and one section per part (see module doc).

    Clients without data and rounds with fewer clients than ``selection.clients_per_round``: a configuration that
    forces them is refused before the run (``clients_per_round > partition.num_clients``; ``num_clients`` above
    the number of training samples for the ``iid`` and Dirichlet partitions). Where they follow from the data
    (Dirichlet skew, a ``natural`` partition with fewer groups than ``clients_per_round``, continual periods in
    which few clients hold data yet, clients retired by their DP budget) the run goes on, a warning is logged and
    the results state them: ``federation/empty_clients`` (clients that hold no training data and are never
    selected) and ``federation/clamped_rounds`` (rounds in which fewer than ``clients_per_round`` clients were
    eligible, so every eligible one was taken; each round's ``eligible`` count is in ``rounds.jsonl``).
    """

    rounds: int = 20
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.default_factory is not dataclasses.MISSING:
                setattr(self, f.name, _section(getattr(self, f.name), f.default_factory))
        _at_least("rounds", self.rounds, 1)
        partition, selection, server = self.partition, self.selection, self.server
        if partition.kind not in ("natural",) and selection.clients_per_round > partition.num_clients:
            raise ConfigError(
                f"federation.selection.clients_per_round={selection.clients_per_round} exceeds "
                f"federation.partition.num_clients={partition.num_clients}: a round cannot select more clients than "
                f"there are; lower clients_per_round to at most {partition.num_clients} (or raise num_clients)"
            )
        if server.min_clients > selection.clients_per_round:
            raise ConfigError(
                f"federation.server.min_clients={server.min_clients} exceeds federation.selection.clients_per_round="
                f"{selection.clients_per_round}, so no round could ever be aggregated; lower min_clients"
            )
        if self.privacy.enabled and selection.scheme != "poisson":
            raise ConfigError(
                f"DP-FedAvg (federation.privacy.noise_multiplier > 0 or target_epsilon) needs "
                f"federation.selection.scheme=poisson, got '{selection.scheme}': its accountant assumes each client "
                f"joins a round independently with probability clients_per_round / num_clients"
            )


@dataclass
class FedProxConfig(FederationConfig):
    """FedAvg options; the client adds FedProx's proximal term (``client.proximal_mu``)."""

    client: FedProxClientConfig = field(default_factory=FedProxClientConfig)


@dataclass
class FedAdamConfig(FederationConfig):
    """FedAvg options; the server steps with Adam (``server.lr``, ``beta1``, ``beta2``, ``tau``)."""

    server: AdaptiveServerConfig = field(default_factory=AdaptiveServerConfig)


@dataclass
class FedYogiConfig(FedAdamConfig):
    """Options of FedYogi (same as FedAdam)."""
