"""Safety: only trusted _target_ prefixes are instantiated; checkpoints load with weights_only=True."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from trustml.errors import CheckpointError, ConfigError
from trustml.run_record import load_state_dict
from trustml.safety import check_targets


def test_untrusted_targets_are_refused_with_the_key() -> None:
    cfg = OmegaConf.create({"model": {"_target_": "trustml.models.mlp.MLP"}, "x": [{"_target_": "os.system"}]})
    with pytest.raises(ConfigError, match=r"x\[0\]._target_='os.system'"):
        check_targets(cfg)
    check_targets(cfg, extra_prefixes=["os"])
    with pytest.raises(ConfigError):
        check_targets(OmegaConf.create({"_target_": "torchvision_evil.x"}))  # prefix match is by module


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle exploit shape
        return (print, ("pwned",))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {"model.w": torch.zeros(1)}, "extra": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(path)


def test_clean_checkpoint_loads_model_weights(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2), "other": torch.zeros(1)}}, path)
    assert set(load_state_dict(path)) == {"w"}
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.ckpt")
