"""Per-round checkpoint of a federated run, so a killed run resumes from its last completed round.

The file ``<run dir>/federation/server_state.pt`` holds the server state (global weights, server optimizer,
RNGs, accountant), the simulated devices' own state, the round history and the process RNG states that
local training draws from. It is written atomically (temporary file + rename) after every round and read
with ``torch.load(weights_only=True)``. A fingerprint of the options that shape the run must match.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from trustml.errors import CheckpointError

FORMAT_VERSION = 1


def capture_process_rng() -> dict[str, Any]:
    """The RNG states of torch (CPU) and Python's ``random`` that local training consumes."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_process_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_process_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_run_state(path: Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write ``state`` with its fingerprint atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT_VERSION, "fingerprint": fingerprint, **state}, tmp)
    tmp.replace(path)


def load_run_state(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read a state written by :func:`save_run_state`; refuse it when unsafe, corrupt or from another setup."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: refuse this file
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True (corrupt or unsafe): {exc}; delete it or set "
            f"federation.resume=false to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a trustml federated-run state (format {FORMAT_VERSION})")
    saved = state.get("fingerprint", {})
    differing = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differing:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"{path} was written by a different federated setup ({detail}); resume with the same options, or "
            f"set federation.resume=false to start over"
        )
    return state
