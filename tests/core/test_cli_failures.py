"""Every bad input, signal and fault of ``trustml`` ends with one clear message, the right exit code and record.

Runs ``trustml`` as a subprocess, as a user (or a scheduler) would: config injection into Hydra's own config,
a run directory in use or not writable, wrong options, missing extras, SIGTERM/SIGINT, a full disk (a
monkeypatched write that raises ENOSPC; a real 120 KB tmpfs too when the tests run as root).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, only_run_dir, read_json, run_cli

QUIET = ["trainer.enable_progress_bar=false"]


def _assert_one_clear_error(out: subprocess.CompletedProcess, code: int, expected: str) -> None:
    assert out.returncode == code, out.stdout + out.stderr
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("trustml: error:") == 1, out.stderr


def test_hydra_callback_injection_is_refused_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    out = run_cli(
        "+hydra.callbacks.evil._target_=shutil.copyfile",
        "+hydra.callbacks.evil.src=pyproject.toml",
        "+hydra.callbacks.evil.dst=copied.toml",
        "trainer.max_epochs=1",
        cwd=tmp_path,
    )
    _assert_one_clear_error(out, 2, "hydra.callbacks.evil._target_='shutil.copyfile' is refused")
    assert not (tmp_path / "copied.toml").exists()
    assert not (tmp_path / "logs" / "runs").exists()  # Hydra never started the run
    record = read_json(only_run_dir(tmp_path) / "run.json")  # logs/failed/<time>
    assert record["status"] == "failed" and "shutil.copyfile" in record["reason"]


def test_a_sweep_is_checked_too_including_each_option_of_a_group_sweep(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    out = run_cli(
        "-m", "+hydra.callbacks.evil._target_=shutil.copyfile", "+hydra.callbacks.evil.src=pyproject.toml",
        "+hydra.callbacks.evil.dst=copied.toml", "seed=1,2", cwd=tmp_path,
    )  # fmt: skip
    _assert_one_clear_error(out, 2, "hydra.callbacks.evil._target_='shutil.copyfile' is refused")
    assert not (tmp_path / "copied.toml").exists() and not (tmp_path / "logs" / "multiruns").exists()
    experiments = tmp_path / "myconf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "fine.yaml").write_text("# @package _global_\nseed: 3\n")
    (experiments / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      console:\n        class: shutil.copyfile\n"
    )
    out = run_cli("-m", "--config-dir", str(tmp_path / "myconf"), "experiment=fine,evil", cwd=tmp_path)
    _assert_one_clear_error(out, 2, "with experiment=evil: hydra.job_logging.handlers.console.class='shutil.copyfile'")
    assert not (tmp_path / "logs" / "multiruns").exists()


def test_trust_is_extended_only_on_the_command_line(tmp_path: Path) -> None:
    experiments = tmp_path / "myconf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "sneaky.yaml").write_text("# @package _global_\ntrusted_target_prefixes: [os]\n")
    out = run_cli("--config-dir", str(tmp_path / "myconf"), "experiment=sneaky", cwd=tmp_path)
    _assert_one_clear_error(out, 2, "trusted_target_prefixes=['os'] is set by a config file")


UNKNOWN_LRR = "option 'lrr' is unknown for optimizer=adam (optimizer.lrr); valid options: lr, weight_decay"
BAD_OPTIONS = {
    "max_epochs=abc": (
        ["trainer.max_epochs=abc"],
        "trainer.max_epochs='abc' is not valid: max_epochs of pytorch_lightning.Trainer must be an integer or null",
    ),
    "+optimizer.lrr": (["+optimizer.lrr=0.1"], UNKNOWN_LRR),
    "optimizer.lrr": (["optimizer.lrr=0.1"], UNKNOWN_LRR),
    "+trainer.foo": (["+trainer.foo=1"], "option 'foo' is unknown for trainer=default (pytorch_lightning.Trainer)"),
    "untrusted loader": (["+model.trust_remote_code=true"], "model.trust_remote_code=true is refused"),
    "cpu_allocator": (["cpu_allocator=jemalloc"], "cpu_allocator='jemalloc' is not one of retain, system"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_a_wrong_option_is_one_clear_error_with_the_valid_ones(case: str, tmp_path: Path) -> None:
    overrides, expected = BAD_OPTIONS[case]
    out = run_cli(*overrides, *QUIET, cwd=tmp_path)
    _assert_one_clear_error(out, 2, expected)
    record = read_json(only_run_dir(tmp_path) / "run.json")
    assert record["status"] == "failed" and expected.split(":")[0] in record["reason"]


def test_a_missing_sweeper_extra_is_named(tmp_path: Path) -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
        pytest.skip("needs an environment without the sweepers extra (hydra-optuna-sweeper is installed here)")
    out = run_cli("hparams_search=digits_optuna", cwd=tmp_path)
    _assert_one_clear_error(out, 2, "hydra/sweeper=optuna (e.g. through hparams_search=...), which is not installed")
    assert 'pip install -e ".[sweepers]"' in out.stderr


def test_a_missing_logger_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """``logger=tensorboard`` without tensorboard: the check that names the extra (in-process; it is installed here)."""
    from tests.core.test_safety import _compose
    from trustml.cli import option_checks as cli
    from trustml.errors import ConfigError

    cfg = _compose(["logger=tensorboard"])
    cli.check_extras(cfg)  # installed: fine
    monkeypatch.setattr(cli, "_importable", lambda module: module not in ("tensorboard", "tensorboardX"))
    expected = r'logger=tensorboard.*needs the `loggers` extra.*pip install -e "\.\[loggers\]"'
    with pytest.raises(ConfigError, match=expected):
        cli.check_extras(cfg)


def test_a_run_directory_in_use_is_refused_and_left_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live owner: this test
    (run_dir / "run.json").write_text('{"status": "running"}\n')
    out = run_cli(f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *QUIET, cwd=tmp_path)
    expected = f"the run directory {run_dir} is in use by another trustml run (pid {os.getpid()}"
    _assert_one_clear_error(out, 2, expected)
    assert (run_dir / "run.json").read_text() == '{"status": "running"}\n'  # never interleaved
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json", "run.lock"]  # not even .hydra/ or a log
    assert (run_dir / "run.lock").read_text().split()[0] == str(os.getpid())


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    out = run_cli(f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert read_json(run_dir / "run.json")["status"] == "completed" and not (run_dir / "run.lock").exists()


def test_an_unwritable_run_directory_is_one_clear_error(tmp_path: Path) -> None:
    out = run_cli("hydra.run.dir=/proc/x", *QUIET, cwd=tmp_path)
    _assert_one_clear_error(out, 2, "cannot use /proc/x as the run directory (hydra.run.dir)")
    assert "set hydra.run.dir to a writable directory" in out.stderr


def _default_stop_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM as an interactive user's process has them. A test run started in
    the background by a non-interactive shell inherits SIGINT ignored, and trustml keeps an ignored signal ignored
    (by design), so the signal tests would otherwise depend on how pytest was launched."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTML_CACHE_DIR": str(cwd / "cache")}
    env.pop("TRUSTML_LOG_DIR", None)
    return subprocess.Popen(
        [str(BIN / "trustml"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_stop_signals,  # noqa: PLW1509 - the child is exec'd right after; nothing else runs
    )


def _wait_until_training(run_dir: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if (
                json.loads((run_dir / "run.json").read_text())["status"] == "running"
                and (run_dir / "metrics.csv").is_file()
            ):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the run did not start training within {timeout}s: {process.communicate()}")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_as_interrupted_with_128_plus_the_signal(
    signum: signal.Signals, code: int, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    process = _start([f"hydra.run.dir={run_dir}", "trainer.max_epochs=1000", *QUIET], tmp_path)
    try:
        _wait_until_training(run_dir, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    record = read_json(run_dir / "run.json")
    assert record["status"] == "interrupted" and record["reason"] == f"interrupted by {signum.name}"
    assert f"trustml: error: interrupted by {signum.name}" in stderr and "Traceback" not in stderr
    assert not (run_dir / "results.json").exists() and not (run_dir / "run.lock").exists()
    assert not list(run_dir.rglob("*.tmp"))


#: Runs trustml with a fault injected: the checkpoint write or the record write reports a full disk, or
#: training runs out of memory.
INJECT = """
import errno, sys, types
mode = sys.argv.pop(1)
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
if mode == "checkpoint":
    import os
    from trustml.callbacks import checkpoint
    checkpoint.os = types.SimpleNamespace(**{**vars(os), "fsync": disk_full})
elif mode in ("record", "record-in-place"):
    import builtins, os
    from trustml import atomic_files, run_record
    real_open = builtins.open
    class Full:
        def __init__(self, handle): self.handle = handle
        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            disk_full()
        def __getattr__(self, name): return getattr(self.handle, name)
        def __enter__(self): return self
        def __exit__(self, *exc): self.handle.close()
    state = {"full": False}
    def open_(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        state["full"] = state["full"] or str(path).endswith("results.json.tmp")
        return Full(handle) if state["full"] and "w" in mode else handle
    run_record.open = atomic_files.open = open_
    def pwrite(fd, data, offset):
        if state["full"]:
            disk_full()
        return os.pwrite(fd, data, offset)
    if mode == "record":
        run_record.os = types.SimpleNamespace(**{**vars(os), "pwrite": pwrite})
elif mode == "oom":
    from trustml.cli import main as cli
    def run(cfg, choices):
        raise MemoryError()
    cli.run = run
from trustml.cli.main import main
sys.argv[0] = "trustml"
main()
"""


def _run_injected(mode: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "inject.py"
    script.write_text(INJECT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTML_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, str(script), mode, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_full_disk_while_checkpointing_fails_the_run_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run_injected("checkpoint", [f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", *QUIET], tmp_path)
    _assert_one_clear_error(out, 1, "disk full (no space left on the device or quota exceeded) while writing")
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and record["reason"].startswith("disk full") and ".ckpt" in record["reason"]
    assert not (run_dir / "results.json").exists() and not (run_dir / "run.lock").exists()
    assert not list((run_dir / "checkpoints").iterdir())  # neither a truncated best.ckpt nor a .tmp
    assert not list(run_dir.rglob("*.tmp"))


def test_a_full_disk_at_the_end_still_records_the_failure_in_place(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run_injected("record-in-place", [f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *QUIET], tmp_path)
    _assert_one_clear_error(out, 1, "disk full")
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and "results.json" in record["reason"]
    assert not (run_dir / "results.json").exists() and not list(run_dir.rglob("*.tmp"))


def test_when_the_record_cannot_be_written_the_exit_is_non_zero_with_one_message(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run_injected("record", [f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *QUIET], tmp_path)
    _assert_one_clear_error(out, 1, "the run could not be recorded: cannot write the run record")
    assert read_json(run_dir / "run.json")["status"] == "running"  # the previous complete record, not 0 bytes
    assert not (run_dir / "results.json").exists() and not list(run_dir.rglob("*.tmp"))


def test_out_of_memory_is_recorded_as_failed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run_injected("oom", [f"hydra.run.dir={run_dir}", *QUIET], tmp_path)
    _assert_one_clear_error(out, 1, "out of memory (MemoryError)")
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and record["reason"].startswith("out of memory")


def _mount_tiny_tmpfs(path: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_really_full_disk_fails_the_run_cleanly(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tiny_tmpfs(disk):
        pytest.skip("mounting a 120 KB tmpfs needs root (the monkeypatched ENOSPC tests cover this case)")
    try:
        run_dir = disk / "run"
        out = run_cli(f"hydra.run.dir={run_dir}", "trainer.max_epochs=3", *QUIET, cwd=tmp_path)
        _assert_one_clear_error(out, 1, "disk full")
        record = read_json(run_dir / "run.json")
        assert record["status"] == "failed" and record["reason"].startswith("disk full")
        assert not (run_dir / "results.json").exists() and not list(run_dir.rglob("*.tmp"))
        assert not (run_dir / "run.lock").exists()
        for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):  # any left is complete: it loads
            import torch

            torch.load(checkpoint, weights_only=True)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
