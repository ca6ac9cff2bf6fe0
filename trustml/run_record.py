"""The run record: ``run.json`` (provenance and status), ``results.json`` (final metrics), model loading.

A run directory holds Hydra's ``.hydra/`` (config, overrides), ``run.json``, ``metrics.csv``,
``results.json`` (only for completed runs), ``checkpoints/`` and, while the run is alive, ``run.lock``
(the owner's pid: :class:`~trustml.run_lock.RunLock` keeps a second run out). Every file is written atomically
(temporary file, fsync, rename, fsync of the directory), so a reader never sees half a file under a final
name. A run that ends for any reason other than success is recorded ``failed`` or ``interrupted`` with the
reason in words (:func:`describe_failure`). :func:`load_model_from_run` rebuilds the trained network of a
completed run, loading weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustml.atomic_files import write_json_atomic
from trustml.errors import CheckpointError, ConfigError, TrustMLError

if TYPE_CHECKING:
    import torch
    from torch import nn

RECORDED_PACKAGES = (
    "trustml",
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "transformers",
    "torchmetrics",
    "numpy",
    "scikit-learn",
)

#: errno values that mean "the disk (or quota) is full".
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state(directory: Path) -> dict[str, Any]:
    """Commit hash and dirty flag of the git work tree containing ``directory`` (``None`` outside git)."""

    def git(*args: str) -> str | None:
        try:
            # core.fsmonitor would run a command named by the repository's own config
            command = ["git", "-c", "core.fsmonitor=false", *args]
            out = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def device_description() -> dict[str, Any]:
    """The compute device: the CUDA device when the task uses torch and one is available, else the CPU with its
    thread count."""
    torch = sys.modules.get("torch")  # a task that does not use torch (trustml-synth) runs on the CPU
    if torch is not None and torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    threads = torch.get_num_threads() if torch is not None else os.cpu_count()
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": threads}


class RunInterrupted(BaseException):
    """Raised in the main thread when the run receives SIGTERM or SIGINT (see :func:`install_signal_handlers`).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it.
    ``exit_code`` is ``128 + signal number``, as shells report a process killed by that signal.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """``128 + signal number`` (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum


class _SignalState:
    """The signal bookkeeping of this process (see :func:`install_signal_handlers`)."""

    received: int | None = None
    owner_pid: int | None = None
    deferred: bool = False


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT handler: remember the signal and, unless deferred, raise :class:`RunInterrupted`."""
    if os.getpid() != _SignalState.owner_pid:
        # a forked worker (data loading): die of the signal as usual, the main process records the run
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _SignalState.received is None:
        _SignalState.received = signum
    if not _SignalState.deferred:
        raise RunInterrupted(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGINT raise :class:`RunInterrupted` in this (main) process.

    Lightning's SIGTERM handler calls the handler installed before it, so this also works during ``fit``.
    A signal the process was started with ignored stays ignored.
    While :func:`finishing` is active a signal is remembered but not raised (the record is being written).
    """
    _SignalState.owner_pid = os.getpid()
    _SignalState.received = None
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # e.g. SIGINT of a background job started by a non-interactive shell: keep ignoring it
        signal.signal(signum, _on_signal)


def received_signal() -> int | None:
    """The first SIGTERM/SIGINT this process received since :func:`install_signal_handlers`, if any."""
    return _SignalState.received


class finishing:  # noqa: N801 - used like a function: ``with finishing(): ...``
    """Context in which SIGTERM/SIGINT do not interrupt (writing the final record, reporting)."""

    def __enter__(self) -> None:
        self._previous = _SignalState.deferred
        _SignalState.deferred = True

    def __exit__(self, *exc: object) -> None:
        _SignalState.deferred = self._previous


def _disk_full_error(error: BaseException) -> OSError | None:
    """The disk-full ``OSError`` in ``error``'s cause/context chain, if any."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def exit_code_for(error: BaseException) -> int:
    """The process exit code for a run that ended with ``error``.

    ``128 + signal`` for SIGTERM/SIGINT, 2 for the user's input (:class:`TrustMLError`), 1 for anything else.
    """
    signum = _signal_of(error)
    if signum is not None:
        return 128 + signum
    if isinstance(error, TrustMLError):
        return 2
    return 1


def _signal_of(error: BaseException) -> int | None:
    """The signal that ended the run (from the error or the signal state), if any."""
    if isinstance(error, RunInterrupted):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return int(signal.SIGINT)
    if type(error).__name__ == "SIGTERMException":  # Lightning's, raised at a batch boundary
        return int(signal.SIGTERM)
    return received_signal()


def describe_failure(error: BaseException) -> tuple[str, str]:
    """``(status, reason in words)`` for a run that ended with ``error``: ``interrupted`` or ``failed``."""
    signum = _signal_of(error)
    if signum is not None:
        return "interrupted", f"interrupted by {signal.Signals(signum).name}"
    full = _disk_full_error(error)
    if full is not None:
        where = f" while writing {full.filename}" if full.filename else ""
        return "failed", (
            f"disk full (no space left on the device or quota exceeded){where}: free space, or set hydra.run.dir "
            f"(and paths.log_dir) to a disk with room, then run again"
        )
    if isinstance(error, MemoryError):
        return "failed", (
            f"out of memory (MemoryError{': ' + str(error) if str(error) else ''}): use a smaller data.batch_size "
            f"or model, or a machine with more memory"
        )
    if isinstance(error, TrustMLError):
        return "failed", str(error)
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return "failed", f"{error.strerror or error}{where}"
    if isinstance(error, SystemExit):
        return "failed", f"exited with code {error.code}"
    message = str(error)
    return "failed", f"{type(error).__name__}: {message}" if message else type(error).__name__


class RecordWriteError(OSError):
    """``run.json`` could not be written (e.g. the disk is full); the message names the file and the cause."""


class RunRecord:
    """Writes ``run.json`` at the start of a run, and again as ``completed``, ``failed`` or ``interrupted``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "run.json"
        self.data: dict[str, Any] = {}

    def start(self, *, seed: int, seed_source: str, overrides: list[str], source_dir: Path, **extra: Any) -> None:
        """Record provenance (seed, overrides, git state, versions, platform, device) with status ``running``."""
        self.data = {
            "status": "running",
            "seed": seed,
            "seed_source": seed_source,
            "overrides": list(overrides),
            "git": git_state(source_dir),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": device_description(),
            "command": sys.argv,
            "start_time": _now(),
            "end_time": None,
            "pid": os.getpid(),
            **extra,
        }
        write_json_atomic(self.path, self.data)

    def update(self, **fields: Any) -> None:
        """Add fields (e.g. the data shape the model was built for) to the record."""
        self.data.update(fields)
        write_json_atomic(self.path, self.data)

    def complete(self, results: dict[str, Any]) -> None:
        """Write ``results.json`` and mark the run ``completed`` (both atomically).

        If marking the run fails, ``results.json`` is removed again: results exist only for completed runs.
        """
        results_path = self.run_dir / "results.json"
        write_json_atomic(results_path, results)
        completed = {**self.data, "status": "completed", "end_time": _now()}
        try:
            write_json_atomic(self.path, completed)
        except BaseException:
            results_path.unlink(missing_ok=True)
            raise
        self.data = completed

    def fail(self, error: BaseException) -> None:
        """Mark the run ``failed`` or ``interrupted`` with the reason in words (:func:`describe_failure`).

        Any ``results.json`` is removed so nothing looks successful. When the disk is too full for a new
        ``run.json``, the record is rewritten in place (shortened, never longer than the file it replaces); when
        even that fails, :class:`RecordWriteError` is raised and the previous complete ``run.json`` stays.
        """
        (self.run_dir / "results.json").unlink(missing_ok=True)
        status, reason = describe_failure(error)
        self.data.update(
            status=status,
            reason=reason,
            end_time=_now(),
            error={
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(error)),
            },
        )
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS or not self._overwrite_in_place():
                raise RecordWriteError(
                    exc.errno, f"cannot write the run record {self.path}: {exc.strerror or exc}"
                ) from exc

    def _overwrite_in_place(self) -> bool:
        """Rewrite ``run.json`` in its existing blocks with a shortened record (no new space needed)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return False
        keep = ("status", "reason", "seed", "seed_source", "overrides", "start_time", "end_time", "pid")
        candidates = [
            {**self.data, "error": {k: v for k, v in self.data.get("error", {}).items() if k != "traceback"}},
            {k: self.data.get(k) for k in keep} | {"note": "shortened: the disk was full"},
        ]
        for candidate in candidates:
            payload = json.dumps(candidate, indent=1, default=str).encode()
            if len(payload) + 1 <= size:
                payload = payload + b" " * (size - len(payload) - 1) + b"\n"
                try:
                    fd = os.open(self.path, os.O_WRONLY)
                    try:
                        os.pwrite(fd, payload, 0)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    return False
                return True
        return False


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run directory; a clear error when it is missing or the run did not complete."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a trustml run directory (no run.json)")
    record = json.loads(path.read_text())
    if record.get("status") != "completed":
        raise CheckpointError(f"run {run_dir} has status '{record.get('status')}', not 'completed'")
    return record


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a Lightning checkpoint (keys of the method's ``model.`` submodule), loaded safely."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: refuse this file
        raise CheckpointError(f"{path} cannot be loaded with weights_only=True (unsafe or corrupt): {exc}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict")
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state


def load_model_from_run(
    run_dir: str | Path, checkpoint: str = "best", trusted_target_prefixes: Iterable[str] = ()
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a completed run and load its ``best`` (or ``last``) weights.

    Returns the model in eval mode and the run's ``model_spec`` (resolved model ``config``,
    ``num_classes``, ``input_dim``, ``label_names``), so callers can check that label maps match their data.
    The recorded model config must pass :func:`~trustml.safety.check_targets` with the built-in trusted
    prefixes plus the caller's ``trusted_target_prefixes``: prefixes recorded in the run directory are not
    trusted by themselves (a run directory may come from someone else).
    """
    from omegaconf import OmegaConf

    from trustml.registry import build_plugin
    from trustml.safety import check_targets

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    spec = record.get("model_spec")
    if not spec or "config" not in spec:
        raise CheckpointError(f"run {run_dir} recorded no model_spec; re-run it with this trustml version")
    try:
        check_targets(OmegaConf.create({"model": spec["config"]}), list(trusted_target_prefixes))
    except ConfigError as exc:
        recorded = record.get("trusted_target_prefixes") or []
        hint = (
            f"; that run was trained with trusted_target_prefixes={recorded}: pass them if you trust {run_dir}"
            if recorded
            else ""
        )
        raise CheckpointError(f"{run_dir}/run.json: {exc}{hint}") from None
    model = build_plugin("model", spec["config"], num_classes=spec["num_classes"], input_dim=spec.get("input_dim"))
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    state = load_state_dict(ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt} does not fit the model recorded in {run_dir}/run.json: {exc}") from None
    return model.eval(), spec
