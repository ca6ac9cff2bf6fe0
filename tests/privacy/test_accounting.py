"""Epsilon, calibration and budgets against Opacus' accountants."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from trustml.errors import ConfigError
from trustml.privacy.accounting import (
    calibrate_noise_multiplier,
    epsilon_after,
    make_accountant,
    spent_epsilon,
    steps_within_budget,
)


@pytest.mark.parametrize(("name", "library"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_the_accounting_library(name: str, library: type) -> None:
    reference = library()
    for _ in range(120):
        reference.step(noise_multiplier=1.1, sample_rate=0.02)
    expected = reference.get_epsilon(delta=1e-5)

    assert epsilon_after([], 1.1, 0.02, 120, 1e-5, name) == pytest.approx(expected, rel=1e-9)
    accountant = make_accountant(name)
    for _ in range(120):
        accountant.step(noise_multiplier=1.1, sample_rate=0.02)
    assert spent_epsilon(accountant, 1e-5) == pytest.approx(expected, rel=1e-9)


def test_nothing_is_spent_before_the_first_step() -> None:
    assert spent_epsilon(make_accountant("rdp"), 1e-5) == 0.0


def test_history_composes_with_further_steps() -> None:
    reference = RDPAccountant()
    for sigma, rate, steps in ((2.0, 0.01, 30), (1.0, 0.05, 10)):
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=rate)
    got = epsilon_after([(2.0, 0.01, 30)], 1.0, 0.05, 10, 1e-6, "rdp")
    # the cached one-step RDP gives Opacus' value to the last bit, also when the cache is warm
    assert got == reference.get_epsilon(delta=1e-6)
    assert epsilon_after([(2.0, 0.01, 30)], 1.0, 0.05, 10, 1e-6, "rdp") == got


def test_calibrated_noise_reaches_the_target_from_below() -> None:
    sigma = calibrate_noise_multiplier(3.0, 1e-5, 0.01, 1000, "rdp")
    spent = epsilon_after([], sigma, 0.01, 1000, 1e-5, "rdp")
    assert 3.0 - 0.05 <= spent <= 3.0
    assert calibrate_noise_multiplier(3.0, 1e-5, 0.01, 4000, "rdp") > sigma  # more steps need more noise


def test_an_unreachable_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"target_epsilon=1e-09 .* too small"):
        calibrate_noise_multiplier(1e-9, 1e-5, 1.0, 10_000, "rdp")


def test_steps_within_budget_is_the_last_step_that_fits() -> None:
    history = [(1.0, 0.02, 50)]
    budget = epsilon_after(history, 1.0, 0.02, 37, 1e-5, "rdp") + 1e-9
    steps = steps_within_budget(history, 1.0, 0.02, 1e-5, budget, "rdp")
    assert steps == 37
    assert epsilon_after(history, 1.0, 0.02, steps + 1, 1e-5, "rdp") > budget


def test_a_spent_history_leaves_no_step() -> None:
    spent = epsilon_after([], 1.0, 0.02, 100, 1e-5, "rdp")
    assert steps_within_budget([(1.0, 0.02, 100)], 1.0, 0.02, 1e-5, spent / 2, "rdp") == 0


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(ConfigError, match="rdp"):
        make_accountant("moments")
