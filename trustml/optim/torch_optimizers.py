"""Plain PyTorch optimizers as ``optimizer=`` plugins: ``Adam(config).build(params)`` is ``torch.optim.Adam``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

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


class _TorchOptimizer(OptimizerPlugin):
    """A plain ``torch.optim`` optimizer: ``build(params)`` is ``torch.optim.<torch_class>(params, **options)``
    (the options dataclass's fields are the torch keyword arguments; Hydra's ``_target_`` is not one)."""

    torch_class: ClassVar[str]

    def __init__(self, config: AdamConfig | AdamWConfig | SGDConfig) -> None:
        self.config = config

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """``torch.optim.<torch_class>`` of ``params`` with this plugin's options."""
        import torch

        fields = dataclasses.fields(self.config)
        options = {f.name: getattr(self.config, f.name) for f in fields if not f.name.startswith("_")}  # no _target_
        return getattr(torch.optim, self.torch_class)(params, **options)


@register("optimizer", "adam", dataclass=AdamConfig)
class Adam(_TorchOptimizer):
    """Adam"""

    torch_class = "Adam"


@register("optimizer", "adamw", dataclass=AdamWConfig)
class AdamW(_TorchOptimizer):
    """AdamW"""

    torch_class = "AdamW"


@register("optimizer", "sgd", dataclass=SGDConfig)
class SGD(_TorchOptimizer):
    """SGD with momentum"""

    torch_class = "SGD"
