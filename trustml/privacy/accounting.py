"""Privacy accounting for DP-SGD with Opacus' accountants (RDP or PRV); no hand-written bounds.

A run is a composition of subsampled Gaussian mechanisms: ``steps`` noisy updates, each on a Poisson
sample with rate ``q`` and noise multiplier ``sigma``. The accountant turns that history into the smallest
``epsilon`` for which training is ``(epsilon, delta)``-DP.
"""

from __future__ import annotations

from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from trustml.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")

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


def spent_epsilon(accountant: IAccountant, delta: float) -> float:
    """epsilon spent so far at ``delta`` (0 before the first step)."""
    return float(accountant.get_epsilon(delta=delta)) if accounted_steps(accountant) else 0.0


def epsilon_after(
    history: list[tuple[float, float, int]], noise_multiplier: float, sample_rate: float, steps: int, delta: float,
    accountant: str,
) -> float:
    """epsilon at ``delta`` after ``history`` and ``steps`` more steps at ``(noise_multiplier, sample_rate)``."""
    fresh = make_accountant(accountant)
    fresh.history = [*history, (noise_multiplier, sample_rate, steps)] if steps > 0 else list(history)
    return spent_epsilon(fresh, delta)


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier (to Opacus' tolerance 0.01 in epsilon) that keeps ``steps`` steps within budget."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
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
    history: list[tuple[float, float, int]], noise_multiplier: float, sample_rate: float, delta: float,
    budget: float, accountant: str,
) -> int:
    """Largest ``k`` such that ``history`` plus ``k`` steps at ``(noise_multiplier, sample_rate)`` keeps
    epsilon at most ``budget`` (at most :data:`MAX_STEPS`)."""

    def fits(k: int) -> bool:
        return epsilon_after(history, noise_multiplier, sample_rate, k, delta, accountant) <= budget

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
