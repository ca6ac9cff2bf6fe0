"""``ckpt_path`` with a file that cannot be resumed from: one clear message, exit 2, a failed record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import only_run_dir, read_json, run_cli
from trustml.errors import CheckpointError
from trustml.federation.checkpoint import read_checkpoint, state_dict_mismatch

FAST = ["seed=3", "trainer.enable_progress_bar=false"]
FIX = "resume from checkpoints/last.ckpt of an earlier run of this same configuration, or start over without ckpt_path"


@pytest.fixture(scope="module")
def last_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``last.ckpt`` of a one-epoch digits run (the default MLP with 128 hidden units)."""
    root = tmp_path_factory.mktemp("first")
    out = run_cli(*FAST, "trainer.max_epochs=1", cwd=root)
    assert out.returncode == 0, out.stderr
    return only_run_dir(root) / "checkpoints" / "last.ckpt"


def _garbage(folder: Path, last: Path) -> Path:
    path = folder / "garbage.ckpt"
    path.write_text("this is not a checkpoint\n")
    return path


def _truncated(folder: Path, last: Path) -> Path:
    path = folder / "truncated.ckpt"
    path.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    return path


def _empty(folder: Path, last: Path) -> Path:
    path = folder / "empty.ckpt"
    path.write_bytes(b"")
    return path


def _weights_only(folder: Path, last: Path) -> Path:
    path = folder / "weights.ckpt"
    torch.save({"state_dict": torch.load(last, weights_only=True)["state_dict"]}, path)
    return path


def _pickled_object(folder: Path, last: Path) -> Path:
    path = folder / "object.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)  # an arbitrary class: needs unpickling code
    return path


CASES = {
    "garbage": ([], _garbage, r"garbage.ckpt is not a PyTorch checkpoint \(it starts with the bytes 74 68 69 73"),
    "truncated": ([], _truncated, r"truncated.ckpt is truncated \(\d+ bytes, its zip archive ends before its table"),
    "empty": ([], _empty, r"empty.ckpt is empty \(0 bytes\)"),
    "another architecture": (
        ["model.hidden_sizes=[16]"],
        None,
        r"last.ckpt was written for another model: 3 tensor shape\(s\) differ \(model.body.0.weight \[128, 64\] in "
        r"the file vs \[16, 64\] now, model.body.0.bias \[128\] in the file vs \[16\] now, model.head.weight",
    ),
    "weights only": ([], _weights_only, r"weights.ckpt holds model weights only \(no optimizer_states, epoch, global_"),
    "pickled objects": ([], _pickled_object, r"object.ckpt holds Python objects besides tensors .*could run code"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_resume_checkpoint_is_refused_with_the_file_the_reason_and_the_fix(
    case: str, last_ckpt: Path, tmp_path: Path
) -> None:
    import re

    overrides, make, reason = CASES[case]
    path = make(tmp_path, last_ckpt) if make is not None else last_ckpt
    out = run_cli(*FAST, *overrides, f"ckpt_path={path}", "trainer.max_epochs=2", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("trustml: error:") == 1
    assert "weights_only=False" not in out.stderr and "weights_only" not in out.stderr
    assert re.search(rf"trustml: error: ckpt_path: {re.escape(str(path.parent))}/{reason}", out.stderr), out.stderr
    assert FIX in out.stderr
    record = read_json(only_run_dir(tmp_path) / "run.json")
    assert record["status"] == "failed" and record["error"]["type"] == "CheckpointError"
    assert str(path) in record["error"]["message"]
    assert not (only_run_dir(tmp_path) / "results.json").exists()


def test_a_run_folder_given_as_resume_from_points_at_its_last_checkpoint(last_ckpt: Path, tmp_path: Path) -> None:
    run_dir = last_ckpt.parent.parent
    out = run_cli(*FAST, f"ckpt_path={run_dir}", "trainer.max_epochs=2", cwd=tmp_path)
    assert out.returncode == 2 and f"did you mean {last_ckpt}?" in out.stderr, out.stderr


def test_read_checkpoint_and_mismatch_helpers(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing.pt is not a file; start over"):
        read_checkpoint(tmp_path / "missing.pt", "start over")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"legacy.pt is truncated or corrupt \(.*\); fix it"):
        read_checkpoint(legacy, "fix it")
    saved = {"a": torch.zeros(2), "b": torch.zeros(3), **{f"extra{i}": torch.zeros(1) for i in range(5)}}
    expected = {"a": torch.zeros(2), "b": torch.zeros(4), "c": torch.zeros(1)}
    assert state_dict_mismatch(saved, expected) == (
        "1 tensor shape(s) differ (b [3] in the file vs [4] now); 1 tensor(s) of the model are missing from the "
        "file (c); 5 tensor(s) in the file are not in the model (extra0, extra1, extra2, and 2 more)"
    )
    assert state_dict_mismatch(expected, expected) == ""
