"""Empirical risk minimisation: plain supervised training with cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

from trustml.methods.base import ClassificationMethod
from trustml.registry import register


@dataclass
class ERMConfig:
    """Options of ``method=erm`` (none beyond the model, optimizer and data groups)."""


@register("method", "erm", dataclass=ERMConfig)
class ERM(ClassificationMethod):
    """Minimises the mean cross-entropy ``-(1/B) sum_i log softmax(f(x_i))_{y_i}``; logs loss and accuracy."""
