"""Per-round checkpoint of a federated run, so a killed run resumes from its last completed round.

A run started again in its run directory continues from it (``federation.runtime.resume``, default); a run in
another directory continues from it when the top-level ``ckpt_path`` names it (or that run's directory).

The file ``<run dir>/federation/server_state.pt`` holds the server state (global weights, server optimizer,
RNGs, accountant), the simulated clients' own state, the round history and the process RNG states that
local training draws from. It is written atomically (temporary file + rename) after every round and read
with ``torch.load(weights_only=True)``. A fingerprint of the options that shape the run must match.

:func:`read_checkpoint` is how every resume point is read (this state, and the Lightning checkpoint of
a centralized run's ``ckpt_path``): a file that cannot be loaded is one :class:`CheckpointError` saying
why in words (empty, truncated, not a PyTorch file, holds code-bearing objects, corrupt), never torch's own
advice to load it with ``weights_only=False``; :func:`state_dict_mismatch` describes a checkpoint written for
another model.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from trustml.atomic_files import write_bytes_atomic
from trustml.errors import CheckpointError

FORMAT_VERSION = 1
#: The round checkpoint's file name, in ``<run dir>/federation/``.
STATE_FILE = "server_state.pt"


def run_state_path(ckpt_path: str | Path) -> Path:
    """The round checkpoint that ``ckpt_path`` names: the file itself, or the ``federation/server_state.pt`` of
    the run directory (or ``federation`` folder) it names."""
    path = Path(ckpt_path)
    if path.is_dir():
        for candidate in (path / "federation" / STATE_FILE, path / STATE_FILE):
            if candidate.is_file():
                return candidate
    return path


def capture_process_rng() -> dict[str, Any]:
    """The RNG states of torch (CPU) and Python's ``random`` that local training consumes."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_process_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_process_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, without torch's advice about ``weights_only``."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return type(exc).__name__ if "weights_only" in line or "Weights only" in line else line


def why_unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``exc``, in words (no advice to unpickle unsafely)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty (0 bytes): the run that wrote it was interrupted or its disk was full"
    unsafe = isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower()
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return (
                f"is truncated ({size} bytes, its zip archive ends before its table of contents): the run that "
                "wrote it was interrupted or its disk was full"
            )
        if unsafe:
            return (
                "holds Python objects besides tensors and plain containers, which trustml does not load "
                "because unpickling them could run code"
            )
        return f"is corrupt ({_first_line(exc)})"
    if head[:1] == _PICKLE_PROTOCOL:  # torch's legacy (pre-1.6) format: a pickle stream
        if unsafe and not isinstance(exc, EOFError):
            return (
                "holds Python objects besides tensors and plain containers (or is corrupt), which trustml does "
                "not load because unpickling them could run code"
            )
        return f"is truncated or corrupt ({_first_line(exc)})"
    return f"is not a PyTorch checkpoint (it starts with the bytes {head.hex(' ')}, not a zip archive or pickle)"


def read_checkpoint(path: Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that cannot be loaded raises
    :class:`CheckpointError` naming it, saying why (:func:`why_unreadable`) and giving ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure means: refuse this file, saying why
        raise CheckpointError(f"{path} {why_unreadable(path, exc)}; {fix}") from None


def _brief(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", and {len(items) - limit} more" if len(items) > limit else "")


def state_dict_mismatch(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """How the tensors of ``saved`` differ from ``expected`` (a module's ``state_dict()``), briefly; ``""`` if they
    match in names and shapes."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [
        f"{k} {list(saved[k].shape)} in the file vs {list(v.shape)} now"
        for k, v in expected.items()
        if k in saved and hasattr(saved[k], "shape") and hasattr(v, "shape") and tuple(saved[k].shape) != tuple(v.shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor shape(s) differ ({_brief(shapes)})")
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model are missing from the file ({_brief(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the file are not in the model ({_brief(unexpected)})")
    return "; ".join(parts)


def save_run_state(path: Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write ``state`` with its fingerprint atomically to ``path`` (serialized in memory, then written, fsync-ed
    and renamed: a full disk or a kill never leaves a truncated resume point)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "fingerprint": fingerprint, **state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


#: What to do instead of resuming a run from its own round checkpoint that cannot be resumed from.
OWN_STATE_FIX = "set federation.runtime.resume=false (or delete it) to start over"


def load_run_state(path: Path, fingerprint: dict[str, Any], fix: str = OWN_STATE_FIX) -> dict[str, Any]:
    """Read a state written by :func:`save_run_state`; refuse it (saying ``fix``) when unsafe, corrupt, not a
    federated-run state or from another setup."""
    state = read_checkpoint(path, fix)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a trustml federated-run state (format {FORMAT_VERSION}); {fix}")
    saved = state.get("fingerprint", {})
    differing = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differing:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"{path} was written by a different federated setup ({detail}); resume with the same options, or {fix}"
        )
    return state
