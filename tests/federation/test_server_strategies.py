"""Server aggregation: FedAvg, FedAdam, FedYogi steps, NaN/inf rejection, min_clients, DP-FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from trustml.federation.client import ClientUpdate
from trustml.federation.options import FedAdamConfig, FederationConfig
from trustml.federation.selection import RoundSelection
from trustml.federation.server import FederatedServer
from trustml.federation.server_optim import (
    FedAdamServer,
    FedAvgServer,
    FedYogiServer,
    ServerOptimizer,
    finite_rows,
    weighted_update,
)
from trustml.privacy.accounting import GaussianAccountant
from trustml.privacy.dp_fedavg import clip_updates, noisy_mean_of_clipped


def test_weighted_update_is_the_weighted_sum_of_rows() -> None:
    updates = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    np.testing.assert_allclose(weighted_update(updates, torch.tensor([0.5, 0.25, 0.25])), [1.5, 1.5])
    assert weighted_update(torch.zeros(0, 3), torch.zeros(0)).tolist() == [0.0, 0.0, 0.0]


def test_fedavg_step_moves_by_server_lr_times_the_update() -> None:
    w = torch.tensor([1.0, -1.0])
    assert FedAvgServer(1.0).step(w, torch.tensor([0.5, 0.5])).tolist() == [1.5, -0.5]
    assert FedAvgServer(0.5).step(w, torch.tensor([0.5, 0.5])).tolist() == [1.25, -0.75]


def test_fedadam_and_fedyogi_follow_reddi_et_al_algorithm_2() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    deltas = [torch.tensor([0.2, -0.4, 0.0]), torch.tensor([0.1, 0.3, -0.2]), torch.tensor([-0.5, 0.1, 0.05])]
    for cls, yogi in ((FedAdamServer, False), (FedYogiServer, True)):
        server = cls(eta, b1, b2, tau)
        w = torch.tensor([1.0, 2.0, 3.0])
        m, v, expected = torch.zeros(3), torch.full((3,), tau**2), w.clone()
        for d in deltas:
            w = server.step(w, d)
            m = b1 * m + (1 - b1) * d
            v = v - (1 - b2) * d**2 * torch.sign(v - d**2) if yogi else b2 * v + (1 - b2) * d**2
            expected = expected + eta * m / (v.sqrt() + tau)
            torch.testing.assert_close(w, expected)


def test_fedyogi_second_moment_differs_from_fedadam() -> None:
    adam, yogi = FedAdamServer(0.1), FedYogiServer(0.1)
    w = torch.zeros(2)
    for d in (torch.tensor([1.0, 0.1]), torch.tensor([0.01, 0.01])):
        wa, wy = adam.step(w, d), yogi.step(w, d)
    assert not torch.allclose(wa, wy)


def test_server_optimizer_state_round_trips() -> None:
    a = FedAdamServer(0.1)
    a.step(torch.zeros(3), torch.ones(3))
    b = FedAdamServer(0.1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.step(torch.zeros(3), torch.ones(3)), b.step(torch.zeros(3), torch.ones(3)))


def test_finite_rows() -> None:
    updates = torch.tensor([[1.0, 2.0], [1.0, float("nan")], [float("-inf"), 0.0], [0.0, 0.0]])
    assert finite_rows(updates) == [True, False, False, True]
    assert finite_rows(torch.zeros(0, 2)) == []


def test_finite_rows_sees_every_non_finite_value_and_no_overflow_of_large_finite_ones() -> None:
    big = torch.finfo(torch.float32).max
    updates = torch.tensor(
        [
            [big, big, big],
            [float("inf"), float("-inf"), 0.0],
            [-big, -big, 1.0],
            [0.0, float("nan"), 0.0],
            [float("-inf"), -1.0, 2.0],
        ]
    )
    assert finite_rows(updates) == [True, False, True, False, False]
    assert finite_rows(updates.double()) == [True, False, True, False, False]
    assert finite_rows(updates[[0, 2]].half().clamp(-6e4, 6e4)) == [True, True]


def selection(clients: list[int], weights: list[float]) -> RoundSelection:
    return RoundSelection(np.array(clients), np.array(weights), len(clients) / 10, 10)


def make_server(
    weights: torch.Tensor, optimizer: ServerOptimizer, config: FederationConfig, seed: int = 0
) -> FederatedServer:
    """The server of ``config``'s ``selection``, ``server`` and ``privacy`` sections."""
    return FederatedServer(
        weights, optimizer, selection=config.selection, server=config.server, privacy=config.privacy, seed=seed
    )


def update(client: int, values: list[float], n: int = 1) -> ClientUpdate:
    return ClientUpdate(client=client, num_examples=n, delta=torch.tensor(values))


def test_server_rejects_non_finite_updates_and_renormalizes_fedavg_weights(caplog) -> None:
    server = make_server(torch.zeros(2), FedAvgServer(), FederationConfig(server={"min_clients": 1}))
    outcome = server.aggregate(
        selection([0, 1, 2], [0.5, 0.25, 0.25]),
        [update(0, [float("nan"), 0.0]), update(1, [1.0, 0.0]), update(2, [0.0, 1.0])],
    )
    assert outcome.rejected == [0] and outcome.accepted == [1, 2] and outcome.aggregated
    torch.testing.assert_close(server.weights, torch.tensor([0.5, 0.5]))
    assert "client 0 holds NaN/inf and is rejected" in caplog.text


def test_server_keeps_the_model_when_fewer_than_min_clients_answered(caplog) -> None:
    server = make_server(torch.ones(2), FedAvgServer(), FederationConfig(server={"min_clients": 2}))
    outcome = server.aggregate(selection([0, 1], [0.5, 0.5]), [update(1, [1.0, 1.0])])
    assert not outcome.aggregated
    torch.testing.assert_close(server.weights, torch.ones(2))
    assert "1 usable update(s) < federation.server.min_clients=2" in caplog.text


def test_unbiased_weights_are_used_as_given() -> None:
    server = make_server(torch.zeros(1), FedAvgServer(), FederationConfig(selection={"weighting": "unbiased"}))
    server.aggregate(selection([0, 1], [2.0, 0.5]), [update(0, [1.0]), update(1, [2.0])])
    torch.testing.assert_close(server.weights, torch.tensor([3.0]))


def test_each_update_gets_its_own_clients_weight_whatever_the_order_of_answers() -> None:
    chosen = selection([3, 5, 7], [0.5, 0.3, 0.2])
    kept = [update(7, [0.0]), update(3, [0.0])]  # 5 did not answer; the others answered out of order
    assert FederatedServer.weights_of(chosen, kept).tolist() == [0.2, 0.5]
    in_order = FederatedServer.weights_of(chosen, [update(3, [0.0]), update(5, [0.0]), update(7, [0.0])])
    assert in_order.dtype == torch.float64 and in_order.tolist() == [0.5, 0.3, 0.2]
    server = make_server(torch.zeros(1), FedAvgServer(), FederationConfig())
    server.aggregate(chosen, [update(3, [1.0]), update(5, [2.0]), update(7, [3.0])])
    assert chosen.weights.tolist() == [0.5, 0.3, 0.2]  # the selection is not changed by the normalisation
    torch.testing.assert_close(server.weights, torch.tensor([1.7]))


def test_clip_updates_bounds_each_row_norm_and_keeps_small_rows() -> None:
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = clip_updates(updates, 1.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_noisy_mean_has_the_gaussian_mechanism_noise_scale() -> None:
    updates = torch.ones(5, 20000) * 10
    generator = torch.Generator().manual_seed(0)
    result = noisy_mean_of_clipped(
        updates, clip_norm=2.0, noise_multiplier=1.5, expected_count=4.0, generator=generator
    )
    clipped_sum = clip_updates(updates, 2.0).sum(0)
    noise = result * 4.0 - clipped_sum
    assert float(noise.std()) == pytest.approx(1.5 * 2.0, rel=0.03)
    assert abs(float(noise.mean())) < 0.05


def test_user_level_accountant_matches_opacus_and_round_trips() -> None:
    ours = GaussianAccountant(noise_multiplier=1.1, delta=1e-5)
    reference = RDPAccountant()
    assert ours.epsilon() == 0.0
    for rate in (0.01, 0.01, 0.02):
        ours.step(rate)
        reference.step(noise_multiplier=1.1, sample_rate=rate)
    assert ours.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5))
    copy = GaussianAccountant(1.1, 1e-5)
    copy.load_state_dict(ours.state_dict())
    assert copy.epsilon() == pytest.approx(ours.epsilon())


def test_dp_fedavg_server_clips_adds_noise_divides_by_expected_count_and_accounts() -> None:
    options = FederationConfig(
        selection={"scheme": "poisson", "clients_per_round": 2}, privacy={"clip_norm": 1.0, "noise_multiplier": 0.0001}
    )
    server = make_server(torch.zeros(2), FedAvgServer(), options)
    outcome = server.aggregate(selection([0, 1], [0.5, 0.5]), [update(0, [30.0, 40.0]), update(1, [0.0, 0.5])])
    assert outcome.aggregated
    # clipped sum (0.6, 0.8 + 0.5) over the expected count q * M = 0.2 * 10 = 2
    torch.testing.assert_close(server.weights, torch.tensor([0.3, 0.65]), atol=1e-3, rtol=0)
    assert server.epsilon() is not None and server.epsilon() > 0


def test_server_state_round_trip_continues_identically() -> None:
    options = FedAdamConfig(selection={"scheme": "poisson"}, privacy={"clip_norm": 1.0, "noise_multiplier": 1.0})
    a = make_server(torch.zeros(3), FedAdamServer(0.1), options, seed=4)
    a.aggregate(a.select(np.array([5, 5, 5, 5])), [update(0, [1.0, 0.0, 0.0]), update(1, [0.0, 1.0, 0.0])])
    b = make_server(torch.zeros(3), FedAdamServer(0.1), options, seed=99)
    b.load_state_dict(a.state_dict())
    sel_a, sel_b = a.select(np.array([5, 5, 5, 5])), b.select(np.array([5, 5, 5, 5]))
    assert sel_a.clients.tolist() == sel_b.clients.tolist()
    ups = [update(int(d), [0.1, 0.2, 0.3]) for d in sel_a.clients]
    a.aggregate(sel_a, ups)
    b.aggregate(sel_b, ups)
    torch.testing.assert_close(a.weights, b.weights)
    assert a.epsilon() == pytest.approx(b.epsilon())


def test_flat_state_covers_trainable_parameters_and_float_buffers_only() -> None:
    from torch import nn

    from trustml.federation.flat_state import FlatLayout, get_flat, set_flat

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    layout = FlatLayout.of(model)
    assert "0.weight" not in layout.names and "1.num_batches_tracked" not in layout.names
    assert {"0.bias", "1.weight", "1.running_mean", "1.running_var", "2.weight"} <= set(layout.names)
    assert layout.size == 4 + 4 + 4 + 4 + 4 + 8 + 2
    frozen = model[0].weight.detach().clone()
    flat = torch.arange(layout.size, dtype=torch.float32)
    set_flat(model, layout, flat)
    torch.testing.assert_close(get_flat(model, layout), flat)
    torch.testing.assert_close(model[0].weight, frozen)
    with pytest.raises(ValueError, match="flat state has 3 values but the model has 30"):
        set_flat(model, layout, torch.zeros(3))
