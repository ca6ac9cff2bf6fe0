"""Every bad federation option is refused with a message that names it (with its section) and the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.federation.conftest import federation
from trustml.errors import ConfigError
from trustml.federation.options import (
    AdaptiveServerConfig,
    ClientConfig,
    FedAdamConfig,
    FederationConfig,
    FedProxClientConfig,
    FedProxConfig,
    ServerConfig,
)
from trustml.federation.strategies import FedAdam, FedAvg, FedProx, FedYogi
from trustml.registry import load_plugins, plugin_config, plugins


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runtime": {"engine": "ray"}}, "federation.runtime.engine must be one of"),
        ({"runtime": {"engine": "deployment", "superlink": "10.0.0.5"}}, "superlink must be the SuperLink's host:port"),
        ({"runtime": {"superlink": "10.0.0.5:9093"}}, "applies to federation.runtime.engine=deployment only"),
        ({"runtime": {"engine": "deployment", "startup_timeout_s": 0}}, "runtime.startup_timeout_s must be > 0"),
        ({"runtime": {"deployment_timeout_s": -1.0}}, "runtime.deployment_timeout_s must be > 0"),
        ({"partition": {"kind": "shards"}}, "federation.partition.kind must be one of"),
        ({"selection": {"scheme": "round_robin"}}, "federation.selection.scheme must be one of"),
        ({"selection": {"weighting": "equal"}}, "federation.selection.weighting must be one of"),
        ({"partition": {"setting": "online"}}, "federation.partition.setting must be one of"),
        ({"partition": {"arrival_order": "reverse"}}, "federation.partition.arrival_order must be one of"),
        ({"rounds": 0}, "federation.rounds must be >= 1"),
        ({"partition": {"num_clients": 0}}, "federation.partition.num_clients must be >= 1"),
        ({"selection": {"clients_per_round": 0}}, "federation.selection.clients_per_round must be >= 1"),
        ({"client": {"local_epochs": 0}}, "federation.client.local_epochs must be >= 1"),
        ({"client": {"local_steps": 0}}, "federation.client.local_steps must be >= 1"),
        ({"server": {"eval_every": 0}}, "federation.server.eval_every must be >= 1"),
        ({"server": {"min_clients": -1}}, "federation.server.min_clients must be >= 0"),
        ({"server": {"min_clients": 11}}, "min_clients=11 exceeds federation.selection.clients_per_round=10"),
        ({"partition": {"dirichlet_alpha": 0.0}}, "federation.partition.dirichlet_alpha must be > 0"),
        ({"partition": {"quantity_beta": -1.0}}, "federation.partition.quantity_beta must be > 0"),
        ({"server": {"lr": 0.0}}, "federation.server.lr must be > 0"),
        ({"client": {"timeout_s": 0.0}}, "federation.client.timeout_s must be > 0"),
        ({"selection": {"activity_exponent": -1.0}}, "federation.selection.activity_exponent must be >= 0"),
        ({"partition": {"num_periods": 3}}, "set federation.partition.setting=continual"),
        ({"partition": {"setting": "continual", "storage_cap": 0}}, "federation.partition.storage_cap must be >= 1"),
        ({"privacy": {"clip_norm": -1.0}}, "federation.privacy.clip_norm must be > 0"),
        ({"privacy": {"noise_multiplier": 1.0}}, "needs federation.privacy.clip_norm set"),
        ({"privacy": {"noise_multiplier": 1.0, "clip_norm": 1.0}}, "needs federation.selection.scheme=poisson"),
        (
            {"privacy": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1.0}, "selection": {"scheme": "poisson"}},
            "federation.privacy.delta must be in",
        ),
        ({"privacy": {"target_epsilon": 0.0}}, "federation.privacy.target_epsilon must be > 0"),
        (
            {
                "privacy": {"target_epsilon": 1.0, "noise_multiplier": 1.0, "clip_norm": 1.0},
                "selection": {"scheme": "poisson"},
            },
            "set it or federation.privacy.noise_multiplier, not both",
        ),
        ({"privacy": {"target_epsilon": 1.0}}, "needs federation.privacy.clip_norm set"),
        ({"client": {"dp_rounds": 0}}, "federation.client.dp_rounds must be >= 1"),
        ({"runtime": {"flower_num_cpus": 0}}, "federation.runtime.flower_num_cpus must be >= 1"),
        ({"client": {"loop": "fast"}}, r"federation.client.loop must be one of \['auto', 'lightning'\]"),
        ({"server": {"max_failed_rounds": 0}}, "federation.server.max_failed_rounds must be >= 1"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederationConfig(**options)


@pytest.mark.parametrize(
    ("section", "options", "message"),
    [
        (AdaptiveServerConfig, {"beta1": 1.0}, "federation.server.beta1 must be in"),
        (AdaptiveServerConfig, {"beta2": -0.1}, "federation.server.beta2 must be in"),
        (AdaptiveServerConfig, {"tau": 0.0}, "federation.server.tau must be > 0"),
        (FedProxClientConfig, {"proximal_mu": -0.1}, "federation.client.proximal_mu must be >= 0"),
    ],
)
def test_strategy_specific_options_are_checked(section, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        section(**options)


def test_unknown_options_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unexpected keyword argument 'rounds_total'"):
        plugin_config("federation", {"_target_": "trustml.federation.strategies.FedAvg", "rounds_total": 3})
    with pytest.raises(TypeError, match="unexpected keyword argument 'proximal_mu'"):
        FederationConfig(client={"proximal_mu": 0.5})


def test_plugins_are_built_from_their_options_dataclass_with_its_sections() -> None:
    assert FedAvg(FederationConfig()).config == FederationConfig()
    assert isinstance(FederationConfig().client, ClientConfig) and isinstance(FedProxConfig().client, ClientConfig)
    assert federation(FedProx, client={"proximal_mu": 0.5}).proximal_mu == 0.5
    assert FedAdam(FedAdamConfig()).config.server.lr == 0.01 and ServerConfig().lr == 1.0
    assert federation(FedYogi, server={"tau": 0.1}).config.server.tau == 0.1
    assert FedAvg.config_class is FederationConfig and FedProx.config_class is FedProxConfig


def test_validate_config_refuses_fedprox_with_a_per_sample_gradient_optimizer() -> None:
    load_plugins()
    dp_sgd, sgd = (plugins("optimizer")[name].target for name in ("dp_sgd", "sgd"))
    cfg = OmegaConf.create(
        {
            "federation": OmegaConf.structured(FedProxConfig(client={"proximal_mu": 0.1})),
            "optimizer": {"_target_": dp_sgd},
        }
    )
    with pytest.raises(ConfigError, match="federation=fedprox adds its proximal term"):
        FedProx.validate_config(cfg)
    cfg.optimizer = {"_target_": sgd}
    FedProx.validate_config(cfg)


def test_the_runner_makes_the_options_dataclass_from_the_composed_node() -> None:
    node = OmegaConf.create({"_target_": "trustml.federation.strategies.FedAvg", "rounds": 0})
    with pytest.raises(ConfigError, match="federation.rounds must be >= 1"):
        plugin_config("federation", node)
