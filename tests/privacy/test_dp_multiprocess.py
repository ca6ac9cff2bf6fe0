"""DP training on several processes and in mixed precision is refused with the reason (before training)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from trustml.errors import ConfigError
from trustml.privacy.plugins import DPSGD, DPAdam


def config(**trainer: object) -> object:
    base = {"accelerator": "cpu", "devices": 1, "max_epochs": 1}
    return OmegaConf.create({"optimizer": {"lr": 0.1}, "trainer": {**base, **trainer}})


@pytest.mark.parametrize(
    ("trainer", "named"),
    [
        ({"strategy": "ddp", "devices": 2}, "trainer.strategy=ddp"),
        ({"strategy": "ddp_spawn"}, "trainer.strategy=ddp_spawn"),
        ({"devices": 2}, "trainer.devices=2"),
        ({"devices": "4"}, "trainer.devices=4"),
        ({"devices": -1}, "trainer.devices=-1"),
        ({"devices": [0, 1], "accelerator": "gpu"}, r"trainer.devices=\[0, 1\]"),
        ({"devices": "auto", "accelerator": "gpu"}, "trainer.devices=auto"),
        ({"num_nodes": 2}, "trainer.num_nodes=2"),
    ],
)
def test_dp_on_several_processes_is_refused_naming_the_setting(trainer: dict, named: str) -> None:
    message = rf"optimizer=DPSGD does not support training on several processes \({named}\)"
    with pytest.raises(ConfigError, match=message):
        DPSGD.validate_config(config(**trainer))
    with pytest.raises(ConfigError, match="Poisson-sample only its own shard.*trainer.devices=1"):
        DPAdam.validate_config(config(**trainer))


@pytest.mark.parametrize(
    "trainer",
    [{}, {"strategy": "auto"}, {"devices": "1"}, {"devices": "auto"}, {"devices": [3], "accelerator": "gpu"}],
)
def test_dp_on_one_device_is_accepted(trainer: dict) -> None:
    DPSGD.validate_config(config(**trainer))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16"])
def test_mixed_precision_is_refused_before_training_and_inside_autocast(precision: str) -> None:
    message = rf"do not support mixed precision \(trainer.precision={precision}\).*trainer.precision=32-true"
    with pytest.raises(ConfigError, match=message):
        DPSGD.validate_config(config(precision=precision))
    DPSGD.validate_config(config(precision="32-true"))


def test_a_private_step_under_autocast_is_refused() -> None:
    import torch

    from tests.privacy.privacy_helpers import cross_entropy, feature_batch, mlp
    from trustml.privacy.engine import NoisePlan
    from trustml.privacy.optimizers import DPSGDOptimizer
    from trustml.privacy.options import DPSGDConfig

    model = mlp()
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0), NoisePlan(1.0, 6.0))
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ConfigError, match="torch.autocast on cpu"):
        optimizer.private_step(model, cross_entropy, feature_batch())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    optimizer.private_step(model, cross_entropy, feature_batch())  # full precision steps
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
