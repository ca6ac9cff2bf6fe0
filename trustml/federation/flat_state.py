"""A model's federated state (trainable parameters and float buffers) as one flat vector, and back.

Server strategies work on flat ``float32`` vectors: an update is ``local - global`` and aggregation is a
weighted sum of rows. Frozen parameters (``requires_grad=False``, e.g. a frozen pretrained encoder) never
change on a client, so they are not sent; neither are non-float buffers (e.g. BatchNorm's
``num_batches_tracked``): the model keeps its own values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FlatLayout:
    """Names, shapes and dtypes of the float entries of a state dict, in flattening order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @cached_property
    def numels(self) -> list[int]:
        """Number of scalars of each entry."""
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @cached_property
    def size(self) -> int:
        """Total number of scalars in the flat vector."""
        return sum(self.numels)

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        """The layout of ``model``'s trainable parameters and floating-point buffers, in state-dict order."""
        federated = {name for name, p in model.named_parameters() if p.requires_grad}
        federated |= {name for name, b in model.named_buffers() if torch.is_floating_point(b)}
        entries = [(k, v) for k, v in model.state_dict().items() if k in federated]
        return cls(tuple(k for k, _ in entries), tuple(v.shape for _, v in entries), tuple(v.dtype for _, v in entries))


def _entries(model: nn.Module, layout: FlatLayout) -> list[Tensor]:
    """The model's current parameter or buffer of each name in ``layout`` (attribute lookups, no state dict)."""
    entries = []
    for name in layout.names:
        value: Any = model
        for part in name.split("."):
            value = getattr(value, part)
        entries.append(value)
    return entries


def get_flat(model: nn.Module, layout: FlatLayout) -> Tensor:
    """The model's float state as one detached ``float32`` CPU vector (a copy)."""
    pieces = [t.detach().reshape(-1) for t in _entries(model, layout)]
    return torch.cat([p if p.dtype == torch.float32 and p.device.type == "cpu" else p.to("cpu", torch.float32)
                      for p in pieces])


def set_flat(model: nn.Module, layout: FlatLayout, flat: Tensor) -> None:
    """Copy ``flat`` into the model's float state in place (parameters keep their identity and device)."""
    if flat.numel() != layout.size:
        raise ValueError(f"flat state has {flat.numel()} values but the model has {layout.size}")
    with torch.no_grad():
        for target, piece in zip(_entries(model, layout), flat.split(layout.numels), strict=True):
            target.copy_(piece.view(target.shape))  # copy_ converts dtype and device
