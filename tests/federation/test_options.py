"""Every bad federation option is refused with a message that names it and the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from trustml.errors import ConfigError
from trustml.federation.options import FedAdamConfig, FederationConfig, FedProxConfig, parse_options
from trustml.federation.strategies import FedAdam, FedAvg, FedProx, FedYogi


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runtime": "ray"}, "federation.runtime must be one of"),
        ({"partition": "shards"}, "federation.partition must be one of"),
        ({"selection": "round_robin"}, "federation.selection must be one of"),
        ({"weighting": "equal"}, "federation.weighting must be one of"),
        ({"setting": "online"}, "federation.setting must be one of"),
        ({"arrival_order": "reverse"}, "federation.arrival_order must be one of"),
        ({"rounds": 0}, "federation.rounds must be >= 1"),
        ({"num_devices": 0}, "federation.num_devices must be >= 1"),
        ({"clients_per_round": 0}, "federation.clients_per_round must be >= 1"),
        ({"local_epochs": 0}, "federation.local_epochs must be >= 1"),
        ({"local_steps": 0}, "federation.local_steps must be >= 1"),
        ({"eval_every": 0}, "federation.eval_every must be >= 1"),
        ({"min_clients": -1}, "federation.min_clients must be >= 0"),
        ({"min_clients": 11}, "min_clients=11 exceeds federation.clients_per_round=10"),
        ({"dirichlet_alpha": 0.0}, "federation.dirichlet_alpha must be > 0"),
        ({"quantity_beta": -1.0}, "federation.quantity_beta must be > 0"),
        ({"server_lr": 0.0}, "federation.server_lr must be > 0"),
        ({"client_timeout_s": 0.0}, "federation.client_timeout_s must be > 0"),
        ({"activity_exponent": -1.0}, "federation.activity_exponent must be >= 0"),
        ({"num_periods": 3}, "set federation.setting=continual"),
        ({"setting": "continual", "storage_cap": 0}, "federation.storage_cap must be >= 1"),
        ({"dp_clip_norm": -1.0}, "federation.dp_clip_norm must be > 0"),
        ({"dp_noise_multiplier": 1.0}, "needs federation.dp_clip_norm set"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0}, "needs federation.selection=poisson"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "selection": "poisson", "dp_delta": 1.0},
         "federation.dp_delta must be in"),
        ({"dp_target_epsilon": 0.0}, "federation.dp_target_epsilon must be > 0"),
        ({"dp_target_epsilon": 1.0, "dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "selection": "poisson"},
         "set it or federation.dp_noise_multiplier, not both"),
        ({"dp_target_epsilon": 1.0}, "needs federation.dp_clip_norm set"),
        ({"dp_device_rounds": 0}, "federation.dp_device_rounds must be >= 1"),
        ({"flower_num_cpus": 0}, "federation.flower_num_cpus must be >= 1"),
        ({"client_loop": "fast"}, r"federation.client_loop must be one of \['auto', 'lightning'\]"),
        ({"max_failed_rounds": 0}, "federation.max_failed_rounds must be >= 1"),
        ({"rounds_total": 3}, r"unknown federation option\(s\) \['rounds_total'\]"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options(FederationConfig, options)


@pytest.mark.parametrize(
    ("config_class", "options", "message"),
    [
        (FedAdamConfig, {"beta1": 1.0}, "federation.beta1 must be in"),
        (FedAdamConfig, {"beta2": -0.1}, "federation.beta2 must be in"),
        (FedAdamConfig, {"tau": 0.0}, "federation.tau must be > 0"),
        (FedProxConfig, {"proximal_mu": -0.1}, "federation.proximal_mu must be >= 0"),
    ],
)
def test_strategy_specific_options_are_checked(config_class, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options(config_class, options)


def test_plugins_parse_their_own_options_and_defaults() -> None:
    assert FedAvg().options == FederationConfig()
    assert FedProx(proximal_mu=0.5).proximal_mu == 0.5
    assert FedAdam().options.server_lr == 0.01 and FedYogi(tau=0.1).options.tau == 0.1
    with pytest.raises(ConfigError, match="unknown federation option"):
        FedAvg(proximal_mu=0.5)


def test_validate_config_refuses_fedprox_with_a_per_sample_gradient_optimizer() -> None:
    cfg = OmegaConf.create({
        "federation": {"_target_": "trustml.federation.strategies.FedProx", "proximal_mu": 0.1},
        "optimizer": {"_target_": "trustml.optim.dp.DPSGD", "_partial_": True},
    })
    with pytest.raises(ConfigError, match="federation=fedprox adds its proximal term"):
        FedProx.validate_config(cfg)
    cfg.optimizer = {"_target_": "torch.optim.SGD", "_partial_": True}
    FedProx.validate_config(cfg)


def test_validate_config_checks_the_federation_node() -> None:
    cfg = OmegaConf.create({"federation": {"_target_": "x", "rounds": 0}, "optimizer": None})
    with pytest.raises(ConfigError, match="federation.rounds must be >= 1"):
        FedAvg.validate_config(cfg)
