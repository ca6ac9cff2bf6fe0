"""Weight interpolation (BCWI): the ends of the path are the two models exactly, Fisher weighting, soups, the rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustml.errors import CheckpointError
from trustml.methods.interpolation import (
    AlphaResult,
    check_same_architecture,
    diagonal_fisher,
    interpolate,
    select_alpha,
    soup,
)


def net(seed: int, hidden: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))


@pytest.mark.parametrize("weighted", [False, True])
def test_alpha_zero_and_one_give_the_new_and_the_old_model_exactly(weighted: bool) -> None:
    old, new = net(0), net(1)
    fisher = {k: torch.rand_like(v) * 5 for k, v in old.state_dict().items()} if weighted else None
    x = torch.randn(7, 4)
    for alpha, expected in ((0.0, new), (1.0, old)):
        model = net(2)
        model.load_state_dict(interpolate(old.state_dict(), new.state_dict(), alpha, fisher))
        for key, value in expected.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(model(x), expected(x))


def test_plain_and_fisher_weighted_formulas() -> None:
    old, new = net(0).state_dict(), net(1).state_dict()
    mid = interpolate(old, new, 0.3)
    for key in old:
        torch.testing.assert_close(mid[key], 0.3 * old[key] + 0.7 * new[key])
    # F -> infinity keeps a weight at the old value, F = 0 moves it to the new one, F = 1 is plain interpolation
    fisher = {k: torch.zeros_like(v) for k, v in old.items()}
    fisher["0.weight"] = torch.full_like(old["0.weight"], 1e9)
    fisher["2.bias"] = torch.ones_like(old["2.bias"])
    weighted = interpolate(old, new, 0.5, fisher)
    torch.testing.assert_close(weighted["0.weight"], old["0.weight"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weighted["0.bias"], new["0.bias"])
    torch.testing.assert_close(weighted["2.bias"], 0.5 * old["2.bias"] + 0.5 * new["2.bias"])
    a = 0.7
    f = torch.rand_like(old["2.weight"]) * 3
    expected = (a * f * old["2.weight"] + (1 - a) * new["2.weight"]) / (a * f + 1 - a)
    torch.testing.assert_close(interpolate(old, new, a, {"2.weight": f})["2.weight"], expected)


def test_soup_is_the_mean_and_architectures_must_match() -> None:
    states = [net(s).state_dict() for s in (0, 1, 2)]
    mixed = soup(states)
    for key in mixed:
        torch.testing.assert_close(mixed[key], (states[0][key] + states[1][key] + states[2][key]) / 3)
    with pytest.raises(
        CheckpointError, match=r"same architecture.*different shapes: \['0.weight: \(6, 4\) vs \(5, 4\)"
    ):
        check_same_architecture(net(0).state_dict(), net(1, hidden=5).state_dict())
    with pytest.raises(CheckpointError, match="only in the new model"):
        interpolate(net(0).state_dict(), {**net(1).state_dict(), "extra": torch.zeros(1)}, 0.5)


def test_diagonal_fisher_is_the_mean_squared_gradient_at_the_model_prediction() -> None:
    model = net(0)
    xs = [torch.randn(1, 4) for _ in range(5)]
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for x in xs:
        model.zero_grad()
        log_probs = F.log_softmax(model(x), dim=-1)
        log_probs[0, log_probs.argmax()].backward()
        for k, p in model.named_parameters():
            expected[k] += p.grad.square()
    fisher = diagonal_fisher(model, xs, scale_to_mean_one=False)
    for k in expected:
        torch.testing.assert_close(fisher[k], expected[k] / 5)
    scaled = diagonal_fisher(model, xs)
    mean = torch.cat([v.flatten() for v in scaled.values()]).mean()
    torch.testing.assert_close(mean, torch.tensor(1.0))
    assert all(p.grad is None for p in model.parameters())


def test_selection_rule_on_a_constructed_sweep() -> None:
    sweep = [
        AlphaResult(0.0, accuracy=0.900, nfr=0.040),  # the new model: the reference
        AlphaResult(0.2, accuracy=0.899, nfr=0.030),
        AlphaResult(0.4, accuracy=0.896, nfr=0.020),  # within 0.005: the lowest NFR that qualifies
        AlphaResult(0.6, accuracy=0.894, nfr=0.010),  # 0.6 points worse: excluded at tolerance 0.005
        AlphaResult(1.0, accuracy=0.850, nfr=0.000),  # the old model
    ]
    assert select_alpha(sweep, 0.005).alpha == 0.4
    assert select_alpha(sweep, 0.0).alpha == 0.0
    assert select_alpha(sweep, 0.01).alpha == 0.6
    assert select_alpha(sweep, 0.1).alpha == 1.0
    tie = [AlphaResult(0.0, 0.9, 0.02), AlphaResult(0.5, 0.9, 0.01), AlphaResult(0.7, 0.91, 0.01)]
    assert select_alpha(tie, 0.0).alpha == 0.7  # equal NFR: the higher accuracy
    with pytest.raises(ValueError, match="must contain 0"):
        select_alpha(sweep[1:], 0.005)
