"""In-process simulation transport: the selected clients train one after another on the shared model.

Only the model *state* is swapped between clients (one model object for all of them), so thousands of
simulated clients cost no more memory than one. Each client keeps its own client-side callback state
(e.g. its DP-SGD accountant) between the rounds it takes part in; that state is checkpointed with the run.
"""

from __future__ import annotations

import logging

import numpy as np
from torch import Tensor

from trustml.federation.client import ClientTimeout, ClientTrainer, ClientUpdate
from trustml.federation.population import ClientPopulation
from trustml.federation.rounds import ClientFailure, ClientStates

log = logging.getLogger(__name__)


class InProcessClients(ClientStates):
    """A :data:`~trustml.federation.rounds.Transport` that runs each selected client's local training here."""

    def __init__(self, trainer: ClientTrainer, population: ClientPopulation) -> None:
        super().__init__()
        self.trainer = trainer
        self.population = population

    def __call__(
        self, round_index: int, period: int, clients: np.ndarray, global_weights: Tensor
    ) -> tuple[list[ClientUpdate], list[ClientFailure]]:
        windows = self.population.windows(period)
        updates: list[ClientUpdate] = []
        failures: list[ClientFailure] = []
        for client in clients.tolist():
            try:
                update = self.trainer.train(client, windows[client], global_weights, self.client_states.get(client, ()))
            except ClientTimeout as exc:
                failures.append(ClientFailure(client, str(exc), timed_out=True))
                continue
            except Exception as exc:  # noqa: BLE001 - a failing client is skipped, the round goes on
                log.debug("client %d raised", client, exc_info=True)
                failures.append(ClientFailure(client, f"{type(exc).__name__}: {exc}"))
                continue
            self.client_states[client] = update.callback_states
            updates.append(update)
        return updates, failures
