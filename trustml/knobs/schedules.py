"""How strongly an attention knob acts at each decoding step.

A knob with bias ``b`` acts at decoder position ``t`` with bias ``b ** s(t)`` (log-bias ``s(t) * log b``), where
``s(t)`` in ``[0, 1]`` is the schedule's strength: ``s = 1`` applies ``b`` in full and ``s = 0`` is neutral. Position
``t = 0`` is the decoder start token, i.e. the query that predicts the first generated token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustml.errors import ConfigError

SCHEDULE_KINDS = ("constant", "linear_decay", "exponential_decay", "window")


@dataclass
class StepSchedule:
    """Strength ``s(t)`` of a knob at decoder position ``t`` (0 before ``start``).

    - ``constant``: ``s(t) = 1``;
    - ``linear_decay``: ``s(t) = max(0, 1 - (t - start) / steps)``;
    - ``exponential_decay``: ``s(t) = rate ** (t - start)``;
    - ``window``: ``s(t) = 1`` for ``start <= t < start + steps``, else 0.
    """

    kind: str = "constant"
    start: int = 0
    steps: int = 1
    rate: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"schedule kind={self.kind!r} is unknown; use one of {list(SCHEDULE_KINDS)}")
        if self.start < 0:
            raise ConfigError(f"schedule start={self.start} must be >= 0 (a decoder position)")
        if self.kind in ("linear_decay", "window") and self.steps < 1:
            raise ConfigError(f"schedule kind={self.kind!r} needs steps >= 1 (got steps={self.steps})")
        if self.kind == "exponential_decay" and not (0.0 < self.rate <= 1.0 and math.isfinite(self.rate)):
            raise ConfigError(f"schedule kind='exponential_decay' needs 0 < rate <= 1 (got rate={self.rate})")

    def strengths(self, positions: Tensor) -> Tensor:
        """``s(t)`` for each decoder position in ``positions`` (any shape), as float32."""
        t = positions.to(torch.float32) - self.start
        active = t >= 0
        if self.kind == "constant":
            s = torch.ones_like(t)
        elif self.kind == "linear_decay":
            s = (1.0 - t / self.steps).clamp(min=0.0)
        elif self.kind == "exponential_decay":
            s = torch.pow(torch.full_like(t, self.rate), t.clamp(min=0.0))
        else:
            s = (t < self.steps).to(torch.float32)
        return torch.where(active, s, torch.zeros_like(s))
