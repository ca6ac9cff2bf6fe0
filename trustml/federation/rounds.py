"""The round loop shared by every runtime: select, train remotely, aggregate, evaluate, checkpoint.

How client updates are obtained is a :data:`Transport`: the in-process simulation trains the clients one
after another on the shared model; the Flower runtime sends messages to SuperNodes. Each completed round
appends one record (selection, faults, timing, test accuracy, privacy) to the history, which is written
to ``rounds.jsonl`` and saved with the checkpoint.

A round that did not update the global model is a *failed round* (:func:`round_failure` says why: every selected
client failed, every update held NaN/inf, fewer usable updates than ``federation.server.min_clients``, or no client
was selected). ``federation.server.max_failed_rounds`` failed rounds in a row (rounds that selected nobody do not
count) stop the run with :class:`ClientsKeepFailingError`, and so does a run in which no selected client trained in
any round: it never reports success for an untrained model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trustml.atomic_files import write_bytes_atomic
from trustml.errors import TrustMLError
from trustml.federation.checkpoint import (
    OWN_STATE_FIX,
    STATE_FILE,
    capture_process_rng,
    load_run_state,
    restore_process_rng,
    save_run_state,
)
from trustml.federation.client import ClientUpdate
from trustml.federation.continual import period_of_round
from trustml.federation.server import FederatedServer

log = logging.getLogger(__name__)


class ClientsKeepFailingError(TrustMLError):
    """Rounds keep failing (several in a row, or all of a run): a systematic fault, not a flaky client."""


@dataclass
class ClientFailure:
    """A selected client that produced no update: it raised, or missed the deadline."""

    client: int
    reason: str
    timed_out: bool = False


#: ``(round, period, clients, global_weights) -> (updates, failures)``
Transport = Callable[[int, int, np.ndarray, Tensor], tuple[list[ClientUpdate], list[ClientFailure]]]


class ClientStates:
    """What a transport keeps of each client between the rounds it takes part in: the callback states of its last
    :class:`~trustml.federation.client.ClientUpdate` (e.g. its DP-SGD accountant), saved with the run checkpoint
    in one form for every runtime, so a run can resume under the other one."""

    def __init__(self) -> None:
        self.client_states: dict[int, list[dict[str, Any]]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The clients' callback states, for the run checkpoint."""
        return {"client_states": {str(k): v for k, v in self.client_states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (written under either runtime)."""
        self.client_states = {int(k): list(v) for k, v in state.get("client_states", {}).items()}


def round_failure(record: dict[str, Any], min_clients: int) -> str | None:
    """Why the round of ``record`` left the global model unchanged, in words; ``None`` if it aggregated."""
    if record["aggregated"]:
        return None
    selected, answered, rejected = record["selected"], record["answered"], record["rejected"]
    if selected == 0:
        return "no client was selected (none held data or was eligible, or Poisson selection drew none)"
    if answered == 0:
        last = f" (last: {record['last_error']})" if record.get("last_error") else ""
        return f"all {selected} selected client(s) failed{last}"
    if answered == rejected:
        return f"all {answered} update(s) held NaN/inf and were rejected"
    return f"only {answered - rejected} usable update(s), fewer than federation.server.min_clients={min_clients}"


def updated_in_some_round(history: list[dict[str, Any]]) -> bool:
    """Whether some round of ``history`` changed the global model (aggregated usable updates)."""
    return any(r["aggregated"] for r in history)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on the batches of ``loader`` (``{"x", "y"}`` dicts)."""
    was_training = model.training
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for batch in loader:
        logits = model(batch["x"])
        correct += int((logits.argmax(dim=-1) == batch["y"]).sum())
        loss += float(F.cross_entropy(logits, batch["y"], reduction="sum"))
        count += len(batch["y"])
    model.train(was_training)
    return {"test_acc": correct / max(count, 1), "test_loss": loss / max(count, 1)}


def lightning_test_metrics(
    method: pl.LightningModule, datamodule: pl.LightningDataModule, make_trainer: Callable[..., pl.Trainer]
) -> dict[str, float]:
    """What ``method``'s own ``test_step`` logs over ``datamodule``'s test split, run by a bare Lightning Trainer
    (no callbacks, logger or checkpoints), each ``test/<name>`` as ``test_<name>`` (e.g. ``test_loss``, ``test_acc``,
    ``test_perplexity`` of ``method=lm``)."""
    import logging as _logging

    loggers = [_logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(_logging.WARNING)
    try:
        trainer = make_trainer(
            callbacks=[],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        was_training = method.training
        tested = trainer.test(method, datamodule=datamodule, verbose=False)
        method.train(was_training)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    metrics = tested[0] if tested else {}
    return {key.replace("/", "_"): float(value) for key, value in metrics.items()}


def _client_metric_summary(updates: list[ClientUpdate]) -> dict[str, float]:
    keys = sorted({k for u in updates for k in u.metrics})
    summary = {}
    for key in keys:
        values = [float(u.metrics[key]) for u in updates if key in u.metrics]
        summary[f"client_{key}_mean"] = math.fsum(values) / len(values)
        summary[f"client_{key}_max"] = max(values)
    return summary


@dataclass
class RoundLoop:
    """Runs rounds ``server.round .. rounds - 1`` and checkpoints after each one.

    ``sizes_at(period)`` gives every client's sample count; ``evaluate(weights)`` the test metrics of a
    global model. After ``max_failed_rounds`` consecutive failed rounds (:func:`round_failure`; rounds that
    selected no client do not count) the loop raises :class:`ClientsKeepFailingError` with the reason, and so does
    :meth:`require_training` at the end of a run in which no client ever trained. A client whose update
    reports ``budget_spent`` (its example-level DP budget is used up) is retired: never selected again, and
    counted in every later round record (``retired``); when every client with data is retired, the run ends
    after that round. ``client_state`` /
    ``restore_client_state`` carry the clients' own state (client-side callback states) through checkpoints.
    """

    server: FederatedServer
    rounds: int
    num_periods: int
    sizes_at: Callable[[int], np.ndarray]
    transport: Transport
    evaluate: Callable[[Tensor], dict[str, float]]
    eval_every: int
    state_dir: Path
    fingerprint: dict[str, Any]
    max_failed_rounds: int | None = None
    client_state: Callable[[], dict[str, Any]] = dict
    restore_client_state: Callable[[dict[str, Any]], None] = lambda state: None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_failure: str = ""
    retired: set[int] = field(default_factory=set)

    @property
    def state_path(self) -> Path:
        """Where the per-round checkpoint lives."""
        return self.state_dir / STATE_FILE

    def resume(self, *, own: bool = True, source: Path | None = None) -> bool:
        """Continue from a round checkpoint; return whether the run continues from one.

        With ``own``, this run's own checkpoint (a killed run started again in its run directory) when there is
        one; else ``source`` when given (``ckpt_path``: the round checkpoint of another run of the same setup).
        """
        own_state = own and self.state_path.is_file()
        path = self.state_path if own_state else source
        if path is None:
            return False
        fix = (
            OWN_STATE_FIX
            if own_state
            else "give ckpt_path the federation/server_state.pt (or the run directory) of a federated run of this same "
            "configuration, or start over without ckpt_path"
        )
        state = load_run_state(path, self.fingerprint, fix)
        self.server.load_state_dict(state["server"])
        self.restore_client_state(state["clients"])
        self.history = list(state["history"])
        self.retired = {int(client) for client in state.get("retired", ())}
        restore_process_rng(state["process_rng"])
        log.info("resuming the federated run from %s after round %d", path, self.server.round)
        return True

    def checkpoint(self) -> None:
        """Save the state after the current round and rewrite ``rounds.jsonl``."""
        state = {
            "server": self.server.state_dict(),
            "clients": self.client_state(),
            "history": self.history,
            "retired": sorted(self.retired),
            "process_rng": capture_process_rng(),
        }
        save_run_state(self.state_path, state, self.fingerprint)
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        write_bytes_atomic(self.state_dir / "rounds.jsonl", lines.encode())

    def run_round(self, index: int) -> dict[str, Any]:
        """One round: select, obtain updates, aggregate; returns its record."""
        start = time.perf_counter()
        period = period_of_round(index, self.rounds, self.num_periods)
        sizes = self.sizes_at(period)
        if self.retired:
            sizes = sizes.copy()
            sizes[sorted(self.retired)] = 0
        selection = self.server.select(sizes)
        updates, failures = self.transport(index, period, selection.clients, self.server.weights)
        for failure in failures:
            log.warning("round %d: client %d skipped (%s)", index + 1, failure.client, failure.reason)
        for update in updates:
            if update.metrics.get("budget_spent"):
                self.retired.add(update.client)
                log.info(
                    "round %d: client %d spent its privacy budget and is selected no more", index + 1, update.client
                )
        self.last_failure = failures[-1].reason if failures else "the updates held NaN/inf"
        outcome = self.server.aggregate(selection, updates)
        self.server.round = index + 1
        record: dict[str, Any] = {
            "round": index + 1,
            "period": period,
            "selected": len(selection.clients),
            "eligible": int(selection.num_eligible),
            "answered": len(updates),
            "failed": sum(not f.timed_out for f in failures),
            "timed_out": sum(f.timed_out for f in failures),
            "rejected": len(outcome.rejected),
            "aggregated": outcome.aggregated,
            "samples": int(sum(u.num_examples for u in updates)),
            "update_norm": outcome.update_norm,
            "retired": len(self.retired),
            "round_s": 0.0,
            **_client_metric_summary(updates),
        }
        if failures:
            record["last_error"] = failures[-1].reason
        if self.server.epsilon() is not None:
            record["dp_epsilon"] = self.server.epsilon()
        if self.retired and index + 1 < self.rounds:
            holders = np.flatnonzero(self.sizes_at(period_of_round(index + 1, self.rounds, self.num_periods)) > 0)
            if self.retired.issuperset(holders.tolist()):
                record["all_retired"] = True
        record["round_s"] = time.perf_counter() - start
        if (index + 1) % self.eval_every == 0 or index + 1 == self.rounds or record.get("all_retired"):
            record.update(self.evaluate(self.server.weights))
        return record

    @property
    def min_clients(self) -> int:
        """The fewest usable updates a round aggregates (``federation.server.min_clients``, at least 1)."""
        return max(int(self.server.config.min_clients), 1)

    def require_training(self) -> None:
        """Raise :class:`ClientsKeepFailingError` when every round of the run failed (none aggregated a usable
        update): the global model is the untrained initial one, so the run must not end as a success."""
        if not self.history or updated_in_some_round(self.history):
            return
        reasons = list(dict.fromkeys(r for r in (round_failure(rec, self.min_clients) for rec in self.history) if r))
        raise ClientsKeepFailingError(
            f"no round of {len(self.history)} updated the global model, so it is untrained: "
            f"{'; '.join(reasons[-3:])}. Fix the cause (the client errors are logged as warnings and in "
            f"federation/rounds.jsonl 'last_error'), then run again in a new run directory (or with "
            f"federation.runtime.resume=false)"
        )

    def run(self) -> list[dict[str, Any]]:
        """Run the remaining rounds; return the full history (see :meth:`require_training`)."""
        failed_in_a_row = 0
        for index in range(self.server.round, self.rounds):
            record = self.run_round(index)
            self.history.append(record)
            self.checkpoint()
            failure = round_failure(record, self.min_clients) if record["selected"] > 0 else None
            failed_in_a_row = failed_in_a_row + 1 if failure else 0
            if self.max_failed_rounds is not None and failed_in_a_row >= self.max_failed_rounds:
                raise ClientsKeepFailingError(
                    f"the global model was not updated in {failed_in_a_row} rounds in a row (last round: {failure}); "
                    f"fix the cause, or raise federation.server.max_failed_rounds"
                )
            log.info(
                "round %d/%d: %s",
                index + 1,
                self.rounds,
                {k: record[k] for k in ("answered", "aggregated", "test_acc") if k in record},
            )
            if record.get("all_retired"):
                log.warning(
                    "every client with data has spent its privacy budget; the run ends after round %d", index + 1
                )
                break
        self.require_training()
        return self.history
