"""The server side of a round, independent of how updates travel: select clients, aggregate, account.

``FederatedServer`` holds the global weights (a flat vector), the server optimizer, the selection RNG,
DP-FedAvg's noise generator and accountant, and the round counter; its :meth:`state_dict` is everything
needed to resume a killed run at the last completed round. It is given the ``federation.selection``,
``federation.server`` and ``federation.privacy`` sections (the latter with DP-FedAvg's noise multiplier
already calibrated).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustml.federation.client import ClientUpdate
from trustml.federation.options import PrivacyConfig, SelectionConfig, ServerConfig
from trustml.federation.selection import Eligibility, RoundSelection, select_clients
from trustml.federation.server_optim import ServerOptimizer, finite_rows, weighted_update
from trustml.privacy.accounting import GaussianAccountant
from trustml.privacy.dp_fedavg import clip_updates, noisy_mean_of_clipped

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What happened to the updates of one round."""

    accepted: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    aggregated: bool = False
    update_norm: float = 0.0


class FederatedServer:
    """Global model and server strategy: FedAvg/FedAdam/FedYogi steps on aggregated client updates."""

    def __init__(
        self,
        weights: Tensor,
        optimizer: ServerOptimizer,
        *,
        selection: SelectionConfig,
        server: ServerConfig,
        privacy: PrivacyConfig,
        seed: int,
    ) -> None:
        self.weights = weights.clone()
        self.optimizer = optimizer
        self.selection, self.config, self.privacy = selection, server, privacy
        self.round = 0
        self.rng = np.random.default_rng(seed)
        #: the last read-only sizes array selected from and what selection derived from it (reused while the
        #: population hands out the same array, i.e. within a period)
        self._eligibility: tuple[np.ndarray, Eligibility] | None = None
        self.noise = torch.Generator().manual_seed(seed)
        self.accountant = (
            GaussianAccountant(privacy.noise_multiplier, privacy.delta) if privacy.noise_multiplier > 0 else None
        )

    def select(self, sizes: np.ndarray) -> RoundSelection:
        """This round's clients and aggregation weights, given every client's current sample count."""
        if self._eligibility is None or self._eligibility[0] is not sizes:
            eligibility = Eligibility.of(sizes)
            if isinstance(sizes, np.ndarray) and not sizes.flags.writeable:  # cannot change under the cache
                self._eligibility = (sizes, eligibility)
        else:
            eligibility = self._eligibility[1]
        return select_clients(
            sizes,
            self.selection.clients_per_round,
            self.selection.scheme,
            self.rng,
            activity_exponent=self.selection.activity_exponent,
            weighting=self.selection.weighting,
            eligibility=eligibility,
        )

    def aggregate(self, selection: RoundSelection, updates: list[ClientUpdate]) -> RoundOutcome:
        """Reject non-finite updates, then (with at least ``min_clients`` left) step the global model."""
        outcome = RoundOutcome()
        stacked = torch.stack([u.delta for u in updates]) if updates else torch.zeros(0, self.weights.numel())
        finite = finite_rows(stacked)
        kept = []
        for update, usable in zip(updates, finite, strict=True):
            if usable:
                kept.append(update)
                outcome.accepted.append(update.client)
            else:
                outcome.rejected.append(update.client)
                log.warning("round %d: update of client %d holds NaN/inf and is rejected", self.round, update.client)
        if len(kept) < max(self.config.min_clients, 1):
            log.warning(
                "round %d: %d usable update(s) < federation.server.min_clients=%d; the global model is unchanged",
                self.round,
                len(kept),
                self.config.min_clients,
            )
            return outcome
        deltas = stacked if len(kept) == len(updates) else stacked[torch.tensor(finite)]
        if self.accountant is not None:
            expected = max(selection.sample_rate * selection.num_eligible, 1.0)
            pseudo_gradient = noisy_mean_of_clipped(
                deltas, self.privacy.clip_norm, self.privacy.noise_multiplier, expected, self.noise
            )
            self.accountant.step(selection.sample_rate)
        else:
            if self.privacy.clip_norm is not None:
                deltas = clip_updates(deltas, self.privacy.clip_norm)
            weights = self.weights_of(selection, kept)
            if self.selection.weighting == "samples":
                weights = weights / weights.sum()  # FedAvg over the clients that answered
            pseudo_gradient = weighted_update(deltas, weights)
        self.weights = self.optimizer.step(self.weights, pseudo_gradient)
        outcome.aggregated = True
        outcome.update_norm = float(pseudo_gradient.norm())
        return outcome

    @staticmethod
    def weights_of(selection: RoundSelection, kept: list[ClientUpdate]) -> Tensor:
        """The selection's aggregation weight of each kept update, in the order of ``kept`` (``float64``)."""
        clients = [u.client for u in kept]
        if clients == selection.clients.tolist():  # every selected client answered, in order
            return torch.from_numpy(np.asarray(selection.weights, dtype=np.float64))
        weight_of = dict(zip(selection.clients.tolist(), selection.weights.tolist(), strict=True))
        return torch.tensor([weight_of[client] for client in clients], dtype=torch.float64)

    def epsilon(self) -> float | None:
        """User-level epsilon of DP-FedAvg so far (``None`` without server-side DP)."""
        return None if self.accountant is None else self.accountant.epsilon()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue from the next round."""
        return {
            "round": self.round,
            "weights": self.weights,
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "noise": self.noise.get_state(),
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.round = int(state["round"])
        self.weights = state["weights"].clone()
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.noise.set_state(state["noise"])
        if self.accountant is not None and state["accountant"] is not None:
            self.accountant.load_state_dict(state["accountant"])
