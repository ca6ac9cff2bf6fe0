"""Plain PyTorch optimizers as ``optimizer=`` plugins (built later with the model's parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from trustml.registry import register


@dataclass
class AdamConfig:
    """Options of ``optimizer=adam`` (torch.optim.Adam)."""

    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class AdamWConfig:
    """Options of ``optimizer=adamw`` (torch.optim.AdamW)."""

    lr: float = 1e-3
    weight_decay: float = 0.01


@dataclass
class SGDConfig:
    """Options of ``optimizer=sgd`` (torch.optim.SGD)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


def _register_torch_optimizers() -> None:
    register("optimizer", "adam", AdamConfig, target="torch.optim.Adam", partial=True, summary="Adam")(AdamConfig)
    register("optimizer", "adamw", AdamWConfig, target="torch.optim.AdamW", partial=True, summary="AdamW")(AdamWConfig)
    register("optimizer", "sgd", SGDConfig, target="torch.optim.SGD", partial=True, summary="SGD with momentum")(
        SGDConfig
    )


_register_torch_optimizers()
