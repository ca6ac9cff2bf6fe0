"""Run records in-process: model rebuilding, loggers, failed-run bookkeeping, atomic writes, run-directory locks."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from trustml import atomic_files, run_record
from trustml.errors import CheckpointError, ConfigError, DataError
from trustml.run_lock import RunDirectoryInUse, RunLock
from trustml.run_record import (
    RecordWriteError,
    RunInterrupted,
    RunRecord,
    describe_failure,
    exit_code_for,
    load_model_from_run,
    write_json_atomic,
)
from trustml.runner import run


def _completed_run(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "run"
    cfg = compose_train(["trainer.max_epochs=1", *overrides], run_dir)
    outcome = run(cfg)
    record = RunRecord(run_dir)
    record.start(seed=0, seed_source="config", overrides=overrides, source_dir=tmp_path)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    return run_dir


def test_model_rebuilt_from_run_gives_the_same_predictions(tmp_path: Path) -> None:
    run_dir = _completed_run(tmp_path, ["model.hidden_sizes=[32]", "logger=tensorboard"])
    model, spec = load_model_from_run(run_dir)
    assert spec["num_classes"] == 10 and spec["label_names"][0] == "0"
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.head.weight, state["model.head.weight"])
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_the_mlflow_logger_records_the_run_in_a_local_store(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="needs the loggers extra (mlflow-skinny)")
    run_dir = _completed_run(tmp_path, ["model.hidden_sizes=[32]", "logger=mlflow"])
    store = next(run_dir.rglob("mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    results = json.loads((run_dir / "results.json").read_text())
    assert runs.loc[0, "metrics.test/acc"] == pytest.approx(results["test/acc"])


def test_loading_from_an_unfinished_or_foreign_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a trustml run directory"):
        load_model_from_run(tmp_path)
    record = RunRecord(tmp_path)
    record.start(seed=1, seed_source="config", overrides=[], source_dir=tmp_path)
    record.fail(DataError("boom"))
    with pytest.raises(CheckpointError, match="status 'failed'"):
        load_model_from_run(tmp_path)
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["error"]["type"] == "DataError" and data["end_time"]


def test_failure_removes_a_partial_results_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    record = RunRecord(tmp_path)
    record.start(seed=1, seed_source="config", overrides=[], source_dir=tmp_path)
    record.fail(RuntimeError("crash"))
    assert not (tmp_path / "results.json").exists()


def test_same_seed_same_metrics_in_process(tmp_path: Path) -> None:
    a = run(compose_train(["trainer.max_epochs=2", "seed=5"], tmp_path / "a")).results
    b = run(compose_train(["trainer.max_epochs=2", "seed=5"], tmp_path / "b")).results
    c = run(compose_train(["trainer.max_epochs=2", "seed=6"], tmp_path / "c")).results
    timing = {"time_per_epoch_s", "train_time_s"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert a["test/loss"] != c["test/loss"]


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_fsyncs_the_file_and_the_directory_around_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001 - os.replace's signature
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(run_record.os, "fsync", fsync)
    monkeypatch.setattr(run_record.os, "replace", replace)
    write_json_atomic(tmp_path / "run.json", {"a": 1})
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}


def test_a_failed_write_keeps_the_previous_file_and_removes_its_tmp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "running"})

    def fsync(fd: int) -> None:
        raise _disk_full()

    monkeypatch.setattr(run_record.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"status": "completed"})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def _started(tmp_path: Path) -> RunRecord:
    record = RunRecord(tmp_path)
    record.start(seed=1, seed_source="config", overrides=["trainer.max_epochs=1"], source_dir=tmp_path)
    return record


def _fail_new_files(monkeypatch, *, in_place_too: bool = False) -> None:
    """From now on, writing a new file in trustml.run_record fails half-way with ENOSPC (a full disk)."""
    real_open = open

    class HalfWritten:
        def __init__(self, handle) -> None:  # noqa: ANN001 - a binary file object
            self.handle = handle

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            raise _disk_full()

        def __getattr__(self, name: str):  # noqa: ANN204 - delegate flush/fileno/close
            return getattr(self.handle, name)

        def __enter__(self) -> HalfWritten:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def full_open(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202 - open's signature
        handle = real_open(path, mode, *args, **kwargs)
        return HalfWritten(handle) if "w" in mode else handle

    for module in (run_record, atomic_files):  # new files are written by atomic_files, in-place ones by run_record
        monkeypatch.setattr(module, "open", full_open, raising=False)
    if in_place_too:

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            raise _disk_full()

        monkeypatch.setattr(run_record.os, "pwrite", pwrite)


def test_a_failure_on_a_full_disk_is_still_recorded_in_place(tmp_path: Path, monkeypatch) -> None:
    record = _started(tmp_path)
    _fail_new_files(monkeypatch)
    record.fail(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "best.ckpt")))
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "failed"
    assert data["reason"].startswith("disk full") and "best.ckpt" in data["reason"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no run.json.tmp, no results.json


def test_when_the_record_cannot_be_written_the_previous_one_stays(tmp_path: Path, monkeypatch) -> None:
    record = _started(tmp_path)
    before = (tmp_path / "run.json").read_text()
    _fail_new_files(monkeypatch, in_place_too=True)
    with pytest.raises(RecordWriteError, match=r"cannot write the run record .*run.json"):
        record.fail(RuntimeError("crash"))
    assert (tmp_path / "run.json").read_text() == before and json.loads(before)["status"] == "running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_results_exist_only_for_a_run_recorded_as_completed(tmp_path: Path, monkeypatch) -> None:
    record = _started(tmp_path)
    real_write = run_record.write_json_atomic

    def write(path: Path, data: object) -> None:
        if path.name == "run.json":
            raise _disk_full()
        real_write(path, data)

    monkeypatch.setattr(run_record, "write_json_atomic", write)
    with pytest.raises(OSError):
        record.complete({"test/acc": 1.0})
    assert not (tmp_path / "results.json").exists()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"


@pytest.mark.parametrize(
    ("error", "status", "reason", "code"),
    [
        (RunInterrupted(signal.SIGTERM), "interrupted", "interrupted by SIGTERM", 143),
        (RunInterrupted(signal.SIGINT), "interrupted", "interrupted by SIGINT", 130),
        (KeyboardInterrupt(), "interrupted", "interrupted by SIGINT", 130),
        (MemoryError(), "failed", "out of memory (MemoryError)", 1),
        (OSError(errno.ENOSPC, "No space left on device", "x/best.ckpt"), "failed", "disk full", 1),
        (DataError("data.path=x.jsonl: no such file"), "failed", "data.path=x.jsonl: no such file", 2),
        (RuntimeError("boom"), "failed", "RuntimeError: boom", 1),
    ],
)
def test_every_ending_has_a_status_a_reason_and_an_exit_code(
    tmp_path: Path, error: BaseException, status: str, reason: str, code: int
) -> None:
    assert describe_failure(error)[0] == status and describe_failure(error)[1].startswith(reason)
    assert exit_code_for(error) == code
    record = _started(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    record.fail(error)
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == status and data["reason"].startswith(reason) and data["end_time"]
    assert not (tmp_path / "results.json").exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_directory_held_by_a_live_process_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(RunDirectoryInUse, match=rf"in use by another trustml run \(pid {holder.pid} on"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / "run.lock").read_text().split()[0] == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path: Path) -> None:
    (tmp_path / "run.lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    lock = RunLock(tmp_path)
    assert lock.acquire() is True
    assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert RunLock(tmp_path).acquire() is False  # this process holds it already
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_a_lock_on_another_host_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "run.lock").write_text("1 some-other-host\n")
    with pytest.raises(RunDirectoryInUse, match="pid 1 on some-other-host"):
        RunLock(tmp_path).acquire()


def test_an_unwritable_run_directory_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot use /proc/x/y as the run directory \(hydra.run.dir\).*writable"):
        RunLock("/proc/x/y").acquire()


class _FakeTrainer:
    """The parts of a Trainer that ModelCheckpoint._save_checkpoint touches; the write may fail half-way."""

    is_global_zero = True
    global_step = 7
    loggers: list = []

    def __init__(self, payload: bytes, fail: bool) -> None:
        self.payload, self.fail = payload, fail

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        with open(filepath, "wb") as handle:
            handle.write(self.payload[: len(self.payload) // 2] if self.fail else self.payload)
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/tmpabc")


def test_a_checkpoint_is_never_left_truncated_under_its_final_name(tmp_path: Path) -> None:
    from trustml.callbacks.checkpoint import AtomicModelCheckpoint

    callback = AtomicModelCheckpoint(dirpath=tmp_path, filename="best")
    best = tmp_path / "best.ckpt"
    callback._save_checkpoint(_FakeTrainer(b"complete checkpoint", fail=False), str(best))
    assert best.read_bytes() == b"complete checkpoint" and callback._last_checkpoint_saved == str(best)
    with pytest.raises(OSError, match="No space left") as raised:
        callback._save_checkpoint(_FakeTrainer(b"the next, bigger checkpoint", fail=True), str(best))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(best)
    assert best.read_bytes() == b"complete checkpoint"  # the previous complete file, not half of the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]
    assert callback.state_key.startswith("ModelCheckpoint{")  # resumes checkpoints of the plain class


def test_two_runs_starting_at_once_cannot_both_take_the_lock(tmp_path: Path) -> None:
    """The lock file is flock-ed while held: even a lock naming a dead pid is not taken while another holds it."""
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path / 'run.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            f"os.write(fd, b'{_dead_pid()} {socket.gethostname()}\\n')\n"
            f"open({str(ready)!r}, 'w').close()\n"
            "time.sleep(60)\n",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the holder did not start"
        with pytest.raises(RunDirectoryInUse, match="in use by another trustml run"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)
    assert lock.acquire() is True  # the holder is gone: its flock went with it and the pid is dead
    lock.release()
