"""Checks that a model admits per-sample gradients (no layer mixes the samples of a batch)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from trustml.errors import ConfigError


def check_per_sample_compatible(model: nn.Module) -> None:
    """Raise :class:`ConfigError` naming every layer whose output for one sample depends on the others.

    BatchNorm normalizes with batch statistics (and InstanceNorm with ``track_running_stats`` keeps running
    statistics over the batch), so a sample's gradient is not its own and DP-SGD's sensitivity bound fails.
    """
    offending = [
        f"'{name}' ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) or (isinstance(module, _InstanceNorm) and module.track_running_stats)
    ]
    if offending:
        raise ConfigError(
            f"DP optimizers need per-sample gradients, but these model layers mix the samples of a batch: "
            f"{', '.join(offending)}. Replace BatchNorm with GroupNorm or LayerNorm (and InstanceNorm with "
            f"track_running_stats=False), or train without optimizer=dp_sgd/dp_adam."
        )
