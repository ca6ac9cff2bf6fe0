"""The run record: ``run.json`` (provenance and status), ``results.json`` (final metrics), model loading.

A run directory holds Hydra's ``.hydra/`` (config, overrides), ``run.json``, ``metrics.csv``,
``results.json`` (only for completed runs) and ``checkpoints/``. :func:`load_model_from_run` rebuilds
the trained network of a completed run, loading weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import traceback
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustml.errors import CheckpointError

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def git_state(directory: Path) -> dict[str, Any]:
    """Commit hash and dirty flag of the git work tree containing ``directory`` (``None`` outside git)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True)
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
    """The compute device: CUDA device name when available, else CPU with its thread count."""
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


class RunRecord:
    """Writes ``run.json`` at the start of a run, and again as ``completed`` or ``failed`` at its end."""

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
            **extra,
        }
        write_json_atomic(self.path, self.data)

    def update(self, **fields: Any) -> None:
        """Add fields (e.g. the data shape the model was built for) to the record."""
        self.data.update(fields)
        write_json_atomic(self.path, self.data)

    def complete(self, results: dict[str, Any]) -> None:
        """Write ``results.json`` and mark the run ``completed``."""
        write_json_atomic(self.run_dir / "results.json", results)
        self.data.update(status="completed", end_time=_now())
        write_json_atomic(self.path, self.data)

    def fail(self, error: BaseException) -> None:
        """Mark the run ``failed`` with the error; remove any ``results.json`` so nothing looks successful."""
        (self.run_dir / "results.json").unlink(missing_ok=True)
        self.data.update(
            status="failed",
            end_time=_now(),
            error={
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(traceback.format_exception(error)),
            },
        )
        write_json_atomic(self.path, self.data)


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


def load_model_from_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a completed run and load its ``best`` (or ``last``) weights.

    Returns the model in eval mode and the run's ``model_spec`` (resolved model ``config``,
    ``num_classes``, ``input_dim``, ``label_names``), so callers can check that label maps match their data.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from trustml.safety import check_targets

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    spec = record.get("model_spec")
    if not spec or "config" not in spec:
        raise CheckpointError(f"run {run_dir} recorded no model_spec; re-run it with this trustml version")
    check_targets(OmegaConf.create({"model": spec["config"]}), record.get("trusted_target_prefixes", []))
    model = instantiate(
        spec["config"], num_classes=spec["num_classes"], input_dim=spec.get("input_dim"), _convert_="all"
    )
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    state = load_state_dict(ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt} does not fit the model recorded in {run_dir}/run.json: {exc}") from None
    return model.eval(), spec
