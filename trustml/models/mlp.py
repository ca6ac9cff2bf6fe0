"""Multi-layer perceptron classifier on feature vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from trustml.errors import ConfigError
from trustml.plugin import ModelPlugin
from trustml.registry import register

NORMS = ("none", "layer", "group", "batch")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class MLPConfig:
    """Options of ``model=mlp``."""

    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.1
    norm: str = "none"
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got '{self.norm}'")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {sorted(ACTIVATIONS)}, got '{self.activation}'")


def _norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "group":
        return nn.GroupNorm(min(8, width), width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    return nn.Identity()


@register("model", "mlp", dataclass=MLPConfig)
class MLP(ModelPlugin, nn.Module):
    """``head(embed(x))`` where ``embed`` is Linear -> norm -> activation -> dropout per hidden layer.

    ``embed(x)`` is the penultimate representation (used by backward-compatible training and retrieval);
    ``head`` is the final linear classifier.
    """

    accepted_input_kinds: ClassVar[frozenset[str]] = frozenset({"features"})

    config: MLPConfig

    def __init__(self, config: MLPConfig, *, num_classes: int, input_dim: int | None) -> None:
        super().__init__()
        if input_dim is None:
            raise ConfigError("model=mlp needs feature-vector data (input_dim unknown); use model=hf_encoder for text")
        self.config = config
        layers: list[nn.Module] = []
        width = input_dim
        for size in config.hidden_sizes:
            layers += [
                nn.Linear(width, size),
                _norm_layer(config.norm, size),
                ACTIVATIONS[config.activation](),
                nn.Dropout(config.dropout),
            ]
            width = size
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width
        self.head = nn.Linear(width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate-layer representation, shape ``[B, embedding_dim]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape ``[B, num_classes]``."""
        return self.head(self.body(x))
