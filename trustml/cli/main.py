"""``trustml``: the Hydra application that composes and runs one experiment (or a sweep with ``-m``).

Single runs are composed once before Hydra starts so that a config error (unknown plugin, wrong-typed
override) ends with one clear message, exit code 2 and a ``failed`` run record instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trustml.cli.help import print_help
from trustml.config_schema import register_config_support
from trustml.errors import ConfigError, TrustMLError
from trustml.registry import load_plugins
from trustml.run_record import RunRecord
from trustml.runner import run

log = logging.getLogger("trustml")

CONFIG_MODULE = "trustml.conf"
CONFIG_NAME = "train"


def format_results(results: dict[str, Any]) -> str:
    """The final metrics as an aligned two-column text table."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in results.items()]
    width = max([len("metric"), *(len(k) for k, _ in rows)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _report_error(message: str) -> None:
    sys.stderr.write(f"trustml: error: {message}\n")


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Hydra task: record provenance, run the experiment, write results; return the optimized metric."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    seed_source = "config"
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31 - 1)
        seed_source = "drawn"
        if hydra_cfg.output_subdir is not None:
            # Keep the saved config complete: re-running it reproduces this run, drawn seed included.
            OmegaConf.save(cfg, run_dir / hydra_cfg.output_subdir / "config.yaml")
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    record = RunRecord(run_dir)
    record.start(
        seed=int(cfg.seed),
        seed_source=seed_source,
        overrides=list(hydra_cfg.overrides.task),
        source_dir=Path(hydra_cfg.runtime.cwd),
        choices=choices,
        trusted_target_prefixes=list(cfg.get("trusted_target_prefixes") or []),
    )
    try:
        outcome = run(cfg, choices)
    except TrustMLError as exc:
        record.fail(exc)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            _report_error(f"{exc}\n(run recorded as failed in {run_dir})")
            sys.exit(2)
        if cfg.get("optimized_metric"):
            raise  # a hyper-parameter sweeper decides what a failed trial means
        # The other jobs of the sweep go on; the sweep summary lists this one as failed and the exit code is 2.
        _report_error(f"job {hydra_cfg.job.num} failed: {exc}\n(recorded in {run_dir})")
        return None
    except BaseException as exc:
        record.fail(exc)
        raise
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    if cfg.print_results:
        print(f"\nResults of {run_dir}:\n{format_results(outcome.results)}\n", flush=True)
    metric = cfg.get("optimized_metric")
    if metric:
        if metric not in outcome.results:
            raise TrustMLError(f"optimized_metric='{metric}' is not among the results {sorted(outcome.results)}")
        return float(outcome.results[metric])
    return None


def _hydra_flags(argv: list[str]) -> bool:
    return any(arg.startswith("-") for arg in argv)


def precheck_overrides(argv: list[str]) -> str | None:
    """Compose the config for a single run; return the error message if it cannot be composed."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            compose(CONFIG_NAME, overrides=argv, return_hydra_config=True)
    except Exception as exc:  # noqa: BLE001 - every composition error is a user error to report
        cause = exc.__cause__
        message = str(exc)
        if cause is not None and str(cause) not in message:
            message = f"{message}\n{cause}"
        return message
    finally:
        GlobalHydra.instance().clear()
    return None


def _record_compose_failure(argv: list[str], message: str) -> Path:
    base = Path(os.environ.get("TRUSTML_LOG_DIR") or Path.cwd() / "logs")
    run_dir = base / "failed" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    record = RunRecord(run_dir)
    record.start(seed=-1, seed_source="none", overrides=argv, source_dir=Path.cwd())
    record.fail(ConfigError(message))
    return run_dir


def main() -> None:
    """Console entry point of ``trustml``."""
    load_plugins()
    register_config_support()
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print_help()
        return
    if not _hydra_flags(argv):
        message = precheck_overrides(argv)
        if message is not None:
            run_dir = _record_compose_failure(argv, message)
            _report_error(f"{message}\n(run recorded as failed in {run_dir})")
            sys.exit(2)
    train()


if __name__ == "__main__":
    main()
