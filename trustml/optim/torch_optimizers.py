"""Plain PyTorch optimizers as ``optimizer=`` plugins: ``Adam(config).build(params)`` is ``torch.optim.Adam``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trustml.plugin import OptimizerPlugin
from trustml.registry import register

if TYPE_CHECKING:
    import torch


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


@register("optimizer", "adam", dataclass=AdamConfig)
class Adam(OptimizerPlugin):
    """Adam"""

    def __init__(self, config: AdamConfig) -> None:
        self.config = config

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """``torch.optim.Adam`` of ``params`` with this plugin's options."""
        import torch

        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)


@register("optimizer", "adamw", dataclass=AdamWConfig)
class AdamW(OptimizerPlugin):
    """AdamW"""

    def __init__(self, config: AdamWConfig) -> None:
        self.config = config

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """``torch.optim.AdamW`` of ``params`` with this plugin's options."""
        import torch

        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)


@register("optimizer", "sgd", dataclass=SGDConfig)
class SGD(OptimizerPlugin):
    """SGD with momentum"""

    def __init__(self, config: SGDConfig) -> None:
        self.config = config

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """``torch.optim.SGD`` of ``params`` with this plugin's options."""
        import torch

        c = self.config
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)
