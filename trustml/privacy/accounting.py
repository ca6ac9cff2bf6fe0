"""Privacy accounting for DP-SGD with Opacus' accountants (RDP or PRV); no hand-written bounds.

A run is a composition of subsampled Gaussian mechanisms: ``steps`` noisy updates, each on a Poisson
sample with rate ``q`` and noise multiplier ``sigma``. The accountant turns that history into the smallest
``epsilon`` for which training is ``(epsilon, delta)``-DP. Calibration and budget searches are pure
functions of their arguments and are cached: the devices of a federation mostly share them.

For the RDP accountant, epsilon is computed as Opacus' ``RDPAccountant.get_privacy_spent`` does, from
Opacus' own ``compute_rdp`` and ``get_privacy_spent``, with one change: the RDP of one step at ``(sigma, q)``
is computed once and cached, since the RDP of ``k`` steps is ``k`` times it (``compute_rdp`` multiplies by
``steps``). Opacus recomputes it at every call (about 0.3 s of pure Python for its 151 orders), which made
a federated DP run spend most of its time in the accountant (every device checks its budget at every fit).
The values are identical to Opacus' (``tests/privacy/test_accounting.py``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from opacus.accountants import IAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from trustml.errors import ConfigError
from trustml.privacy.options import ACCOUNTANTS

#: Searching for the number of affordable steps stops here (the budget is then effectively unlimited).
MAX_STEPS = 2**31


def make_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant: ``rdp`` (Mironov 2017) or ``prv`` (Gopi et al. 2021)."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"optimizer.accountant must be one of {ACCOUNTANTS}, got {name!r}")
    return create_accountant(mechanism=name)


def accounted_steps(accountant: IAccountant) -> int:
    """Number of noisy steps in the accountant's history (Opacus' ``len`` counts history entries)."""
    return sum(int(steps) for _, _, steps in accountant.history)


@lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP at Opacus' default orders of one subsampled Gaussian step (read-only; cached)."""
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    rdp.flags.writeable = False
    return rdp


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """``RDPAccountant(history).get_epsilon(delta)``, from cached one-step RDP vectors."""
    rdp = sum(int(steps) * _rdp_of_one_step(float(sigma), float(q)) for sigma, q, steps in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def _epsilon_of_history(history: list[tuple[float, float, int]], delta: float, mechanism: str) -> float:
    if not any(int(steps) for _, _, steps in history):
        return 0.0
    if mechanism == "rdp":
        return _rdp_epsilon(history, delta)
    accountant = make_accountant(mechanism)
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def spent_epsilon(accountant: IAccountant, delta: float) -> float:
    """epsilon spent so far at ``delta`` (0 before the first step)."""
    return _epsilon_of_history(list(accountant.history), delta, accountant.mechanism())


def epsilon_after(
    history: list[tuple[float, float, int]],
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str,
) -> float:
    """epsilon at ``delta`` after ``history`` and ``steps`` more steps at ``(noise_multiplier, sample_rate)``."""
    entries = [*history, (noise_multiplier, sample_rate, steps)] if steps > 0 else list(history)
    return _epsilon_of_history(entries, delta, accountant)


@lru_cache(maxsize=1024)
def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier (to Opacus' tolerance 0.01 in epsilon) that keeps ``steps`` steps within budget."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    except ValueError as exc:
        raise ConfigError(
            f"optimizer.target_epsilon={target_epsilon} (delta={delta:.3g}) is too small for {steps} steps at "
            f"sampling rate {sample_rate:.4g}: no noise multiplier up to 1e6 reaches it ({exc}). Raise "
            f"target_epsilon, train fewer epochs, or use smaller batches."
        ) from exc


def steps_within_budget(
    history: list[tuple[float, float, int]],
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    budget: float,
    accountant: str,
) -> int:
    """Largest ``k`` such that ``history`` plus ``k`` steps at ``(noise_multiplier, sample_rate)`` keeps
    epsilon at most ``budget`` (at most :data:`MAX_STEPS`)."""
    entries = tuple((float(s), float(q), int(k)) for s, q, k in history)
    return _steps_within_budget(
        entries, float(noise_multiplier), float(sample_rate), float(delta), float(budget), accountant
    )


@lru_cache(maxsize=4096)
def _steps_within_budget(
    history: tuple[tuple[float, float, int], ...],
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    budget: float,
    accountant: str,
) -> int:
    def fits(k: int) -> bool:
        return epsilon_after(list(history), noise_multiplier, sample_rate, k, delta, accountant) <= budget

    if not fits(0):
        return 0
    low, high = 0, 1
    while fits(high):
        if high >= MAX_STEPS:
            return MAX_STEPS
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


class GaussianAccountant:
    """The privacy loss of a run of subsampled Gaussian steps at one noise multiplier, at a fixed ``delta``.

    Both kinds of DP account with it: DP-SGD (one step per noisy update, rate ``q`` of the Poisson batches) and
    DP-FedAvg (one step per round, rate ``q`` of the client selection). ``mechanism`` is the Opacus accountant
    (``rdp`` or ``prv``) whose history it keeps; :meth:`state_dict` is that history, for checkpoints.
    """

    def __init__(self, noise_multiplier: float, delta: float, mechanism: str = "rdp") -> None:
        self.noise_multiplier, self.delta = float(noise_multiplier), float(delta)
        self.accountant = make_accountant(mechanism)

    @property
    def mechanism(self) -> str:
        """``rdp`` or ``prv``."""
        return self.accountant.mechanism()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """Opacus' history: ``(noise multiplier, sample rate, steps)`` entries."""
        return self.accountant.history

    def step(self, sample_rate: float) -> None:
        """Account for one step in which each sample (or client) took part with probability ``sample_rate``."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)

    def steps(self) -> int:
        """Number of steps accounted so far."""
        return accounted_steps(self.accountant)

    def epsilon(self) -> float:
        """The ``epsilon`` of ``(epsilon, delta)``-DP spent so far (0 before the first step)."""
        return spent_epsilon(self.accountant, self.delta)

    def steps_within(self, budget: float, sample_rate: float) -> int:
        """How many more steps at ``sample_rate`` keep epsilon at most ``budget``."""
        return steps_within_budget(
            self.accountant.history, self.noise_multiplier, sample_rate, self.delta, budget, self.mechanism
        )

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history, for checkpoints."""
        return {"history": list(self.accountant.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.accountant.history = [tuple(entry) for entry in state["history"]]
