"""Shared test helpers: composing trustml configs in-process and running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from trustml.config_schema import register_config_support
from trustml.registry import load_plugins

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRUSTML_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
BIN = Path(sys.executable).parent

torch.set_num_threads(1)

#: A BERT small enough to build from its config in milliseconds (random weights, MiniLM's vocabulary), as a
#: ``random_init_config`` / ``AutoConfig.for_model(**TINY_BERT_CONFIG)`` mapping and as a command-line override value.
TINY_BERT_CONFIG = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 30522,
    "max_position_embeddings": 64,
}
TINY_BERT = (
    "{model_type:bert,hidden_size:16,num_hidden_layers:2,num_attention_heads:2,intermediate_size:32,"
    "vocab_size:30522,max_position_embeddings:64}"
)


def requires_shared_data(*parts: str) -> pytest.MarkDecorator:
    """Skip (naming the missing folder) unless ``../shared/data/<parts>`` exists."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"needs the development data at {path}")


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed training config for ``overrides``, with Hydra's runtime set to ``output_dir``."""
    load_plugins()
    register_config_support()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="trustml.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if cfg.seed is None:
            cfg.seed = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(output_dir / "cache")
        cfg.trainer.enable_progress_bar = False
    return cfg


def run_cli(*args: str, cwd: Path, tool: str = "trustml", timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a console script of this environment as a user would; capture its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTML_CACHE_DIR": str(cwd / "cache")}
    env.pop("TRUSTML_LOG_DIR", None)
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def only_run_dir(root: Path) -> Path:
    """The single run directory below ``root/logs/runs`` (or ``logs/failed``)."""
    dirs = [p.parent for p in root.glob("logs/*/*/run.json")]
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return dirs[0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
