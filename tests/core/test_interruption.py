"""A stop signal whose raise was lost (e.g. it fired inside a destructor) still ends the fit at the next batch."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import compose_train
from trustml import run_record
from trustml.run_record import RunInterrupted, finishing, raise_if_interrupted
from trustml.runner import run


def _received(monkeypatch: pytest.MonkeyPatch, signum: int | None, pid: int | None = None) -> None:
    monkeypatch.setattr(run_record._SignalState, "received", signum)
    monkeypatch.setattr(run_record._SignalState, "owner_pid", os.getpid() if pid is None else pid)


def test_a_received_signal_ends_training_at_the_next_batch(monkeypatch, tmp_path):
    _received(monkeypatch, signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM") as caught:
        run(compose_train(["trainer.max_epochs=50", "logger=none"], tmp_path))
    assert caught.value.exit_code == 143


def test_nothing_is_raised_while_deferred_in_another_process_or_without_a_signal(monkeypatch):
    _received(monkeypatch, signal.SIGINT)
    with finishing():
        raise_if_interrupted()
    _received(monkeypatch, signal.SIGINT, pid=os.getpid() + 1)
    raise_if_interrupted()
    _received(monkeypatch, None)
    raise_if_interrupted()
