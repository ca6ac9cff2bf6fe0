"""A model's federated state (trainable parameters and float buffers) as one flat vector, and back.

Server strategies work on flat ``float32`` vectors: an update is ``local - global`` and aggregation is a
weighted sum of rows. Frozen parameters (``requires_grad=False``, e.g. a frozen pretrained encoder) never
change on a client, so they are not sent; neither are non-float buffers (e.g. BatchNorm's
``num_batches_tracked``): the model keeps its own values.

A simulation swaps the global model into the same model thousands of times; :class:`FlatBinding` stores a
CPU ``float32`` model's federated entries in one flat vector that they view, so that loading the global
model and reading a client's update are one vector operation each instead of one copy per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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


def _owners(model: nn.Module, layout: FlatLayout) -> list[tuple[nn.Module, str]]:
    """``(module, attribute)`` holding each entry of ``layout``."""
    owners = []
    for name in layout.names:
        *path, leaf = name.split(".")
        module = model
        for part in path:
            module = getattr(module, part)
        owners.append((module, leaf))
    return owners


def _entries(model: nn.Module, layout: FlatLayout) -> list[Tensor]:
    """The model's current parameter or buffer of each name in ``layout`` (attribute lookups, no state dict)."""
    return [getattr(module, leaf) for module, leaf in _owners(model, layout)]


def get_flat(model: nn.Module, layout: FlatLayout) -> Tensor:
    """The model's float state as one detached ``float32`` CPU vector (a copy)."""
    pieces = [t.detach().reshape(-1) for t in _entries(model, layout)]
    return torch.cat(
        [p if p.dtype == torch.float32 and p.device.type == "cpu" else p.to("cpu", torch.float32) for p in pieces]
    )


def _check_size(flat: Tensor, size: int) -> None:
    if flat.numel() != size:
        raise ValueError(f"flat state has {flat.numel()} values but the model has {size}")


def set_flat(model: nn.Module, layout: FlatLayout, flat: Tensor) -> None:
    """Copy ``flat`` into the model's float state in place (parameters keep their identity and device)."""
    _check_size(flat, layout.size)
    with torch.no_grad():
        for target, piece in zip(_entries(model, layout), flat.split(layout.numels), strict=True):
            target.copy_(piece.view(target.shape))  # copy_ converts dtype and device


class FlatBinding:
    """A model whose federated entries (see :class:`FlatLayout`) are views into one flat ``float32`` vector.

    :meth:`bind` moves the entries' values into :attr:`vector` and points each entry at its slice (parameters
    keep their identity, so optimizers and hooks are unaffected): ``vector.copy_(weights)`` is then
    :func:`set_flat` and ``vector - weights`` is ``get_flat(...) - weights``, one operation each. Anything
    that gives an entry new storage (moving the model to another device and back, assigning ``.data`` or a new
    parameter) ends the binding, which :meth:`intact` detects; callers then fall back to :func:`set_flat` /
    :func:`get_flat`.
    """

    def __init__(self, owners: list[tuple[nn.Module, str]], vector: Tensor) -> None:
        self.vector = vector
        # the registry (``_parameters`` or ``_buffers``) holding each entry: a plain dict lookup per check, and
        # assigning a new parameter or buffer to the module replaces the registry's entry, which intact() sees
        self.slots = [
            (module._parameters if leaf in module._parameters else module._buffers, leaf) for module, leaf in owners
        ]
        self.addresses = [registry[leaf].data_ptr() for registry, leaf in self.slots]

    @classmethod
    def bind(cls, model: nn.Module, layout: FlatLayout) -> FlatBinding | None:
        """Bind ``model``'s entries to one new vector holding their values; ``None`` when an entry is not ``float32``
        on the CPU. (A tensor shared by two modules, as tied weights are, is one entry of the layout.)"""
        entries = _entries(model, layout)
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in entries):
            return None
        vector = torch.cat([t.detach().reshape(-1) for t in entries])
        with torch.no_grad():
            for entry, piece in zip(entries, vector.split(layout.numels), strict=True):
                entry.data = piece.view(entry.shape)
        return cls(_owners(model, layout), vector)

    def load(self, flat: Tensor) -> None:
        """:func:`set_flat` through the binding: copy ``flat`` into :attr:`vector`."""
        _check_size(flat, self.vector.numel())
        self.vector.copy_(flat)

    def intact(self) -> bool:
        """Whether every entry of the model still views :attr:`vector`."""
        try:
            return [registry[leaf].data_ptr() for registry, leaf in self.slots] == self.addresses
        except (KeyError, AttributeError):  # the entry was deleted or set to None
            return False
