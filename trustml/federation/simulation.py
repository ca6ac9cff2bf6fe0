"""In-process simulation transport: the selected devices train one after another on the shared model.

Only the model *state* is swapped between devices (one model object for all of them), so thousands of
simulated devices cost no more memory than one. Each device keeps its own client-side callback state
(e.g. its DP-SGD accountant) between the rounds it takes part in; that state is checkpointed with the run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import Tensor

from trustml.federation.client import ClientTimeout, ClientUpdate, LocalTrainer
from trustml.federation.devices import DevicePopulation
from trustml.federation.rounds import ClientFailure

log = logging.getLogger(__name__)


class InProcessClients:
    """A :data:`~trustml.federation.rounds.Transport` that runs each selected device's local training here."""

    def __init__(self, trainer: LocalTrainer, population: DevicePopulation) -> None:
        self.trainer = trainer
        self.population = population
        self.device_states: dict[int, list[dict[str, Any]]] = {}

    def __call__(
        self, round_index: int, period: int, devices: np.ndarray, global_weights: Tensor
    ) -> tuple[list[ClientUpdate], list[ClientFailure]]:
        windows = self.population.windows(period)
        updates: list[ClientUpdate] = []
        failures: list[ClientFailure] = []
        for device in devices.tolist():
            try:
                update = self.trainer.train(device, windows[device], global_weights, self.device_states.get(device, ()))
            except ClientTimeout as exc:
                failures.append(ClientFailure(device, str(exc), timed_out=True))
                continue
            except Exception as exc:  # noqa: BLE001 - a failing client is skipped, the round goes on
                log.debug("device %d raised", device, exc_info=True)
                failures.append(ClientFailure(device, f"{type(exc).__name__}: {exc}"))
                continue
            self.device_states[device] = update.callback_states
            updates.append(update)
        return updates, failures

    def state_dict(self) -> dict[str, Any]:
        """The devices' own state (client-side callback states), for the run checkpoint."""
        return {"device_states": {str(k): v for k, v in self.device_states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.device_states = {int(k): list(v) for k, v in state.get("device_states", {}).items()}
