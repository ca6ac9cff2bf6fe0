"""method=lqf end to end: composes, trains on digits, applies K-FAC inside Lightning's step, refuses bad input."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import compose_train
from trustml.errors import ConfigError
from trustml.methods.lqf import LinearQuadraticFineTuning, LQFConfig
from trustml.models.mlp import MLP, MLPConfig
from trustml.runner import run

#: Measured: 0.96 test accuracy with these settings (seed 0, 3 epochs, Adam 0.01, defaults: all layers, MSE, K-FAC),
#: exact Fisher; 0.964 with method.kfac_fisher=sampled.
LQF_DIGITS_BOUND = 0.9


@pytest.mark.parametrize("fisher", ["exact", "sampled"])
def test_lqf_trains_on_digits(tmp_path: Path, fisher: str) -> None:
    cfg = compose_train(
        [
            "method=lqf",
            f"method.kfac_fisher={fisher}",
            "optimizer=adam",
            "optimizer.lr=0.01",
            "trainer.max_epochs=3",
            "seed=0",
        ],
        tmp_path,
    )
    results = run(cfg).results
    assert results["test/acc"] >= LQF_DIGITS_BOUND, results


def test_unknown_kfac_fisher_is_refused_naming_the_option(tmp_path: Path) -> None:
    cfg = compose_train(["method=lqf", "method.kfac_fisher=mc"], tmp_path)
    with pytest.raises(ConfigError, match=r"method.kfac_fisher must be one of \('exact', 'sampled'\)"):
        run(cfg)


def method(optimizer: partial, **options: object) -> LinearQuadraticFineTuning:
    torch.manual_seed(0)
    net = MLP(MLPConfig(hidden_sizes=[8], dropout=0.0), num_classes=3, input_dim=5)
    return LinearQuadraticFineTuning(LQFConfig(**options), model=net, optimizer=optimizer, num_classes=3)  # type: ignore[arg-type]


def test_kfac_preconditions_the_gradient_that_a_lightning_style_closure_step_applies() -> None:
    lqf = method(partial(torch.optim.SGD, lr=0.5, momentum=0.0), kfac_damping=0.1)
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    assert lqf.kfac is not None
    lqf.kfac.update(x)
    optimizer = lqf.configure_optimizers()
    before = [d.detach().clone() for d in lqf.model.delta]
    grads: list[torch.Tensor] = []

    def closure() -> torch.Tensor:  # as Lightning's automatic optimization: gradients computed inside step()
        optimizer.zero_grad()
        loss = lqf.batch_loss(lqf.model(x), {"x": x, "y": y})
        loss.backward()
        grads.extend(d.grad.detach().clone() for d in lqf.model.delta)
        return loss

    optimizer.step(closure)
    expected_w, expected_b = lqf.kfac.precondition("head", grads[2], grads[3])  # body.0 then head, weight/bias
    torch.testing.assert_close(lqf.model.delta[2].detach() - before[2], -0.5 * expected_w)
    torch.testing.assert_close(lqf.model.delta[3].detach() - before[3], -0.5 * expected_b)
    assert not torch.allclose(expected_w, grads[2])  # the preconditioner changed the step


def test_lqf_loss_is_mse_on_scaled_one_hot_or_ce() -> None:
    logits, y = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    mse = method(partial(torch.optim.SGD, lr=0.1), target_scale=2.0, precondition="none")
    torch.testing.assert_close(mse.sample_losses(logits, {"y": y}), torch.tensor([1.0, 4.0]))
    ce = method(partial(torch.optim.SGD, lr=0.1), loss="ce", precondition="none")
    expected = nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(ce.sample_losses(logits, {"y": y}), expected)


def test_leaky_relu_swap_is_in_the_linearized_part_only() -> None:
    lqf = method(partial(torch.optim.SGD, lr=0.1), linearize="head")
    assert lqf.swapped == [] and isinstance(lqf.model.network.body[2], nn.ReLU)
    lqf = method(partial(torch.optim.SGD, lr=0.1), linearize="all", leaky_relu_slope=0.05)
    assert lqf.swapped == ["body.2 (ReLU)"] and lqf.model.network.body[2].negative_slope == 0.05


def test_unknown_linearize_value_is_refused_with_the_choices(tmp_path: Path) -> None:
    cfg = compose_train(["method=lqf", "method.linearize=everything"], tmp_path)
    with pytest.raises(ConfigError, match=r"method.linearize must be one of \('head', 'last_k_layers', 'all'\), got"):
        run(cfg)


def test_kfac_on_an_uncovered_layer_is_refused_naming_it_and_the_choices(tmp_path: Path) -> None:
    cfg = compose_train(["method=lqf", "model.norm=layer"], tmp_path)
    with pytest.raises(ConfigError, match=r"layer 'body.1' is a LayerNorm; use method.precondition=none"):
        run(cfg)
    cfg = compose_train(
        ["method=lqf", "model.norm=layer", "method.precondition=none", "trainer.max_epochs=1"], tmp_path / "none"
    )
    assert run(cfg).results["test/acc"] > 0.3  # without K-FAC the same model trains
    cfg = compose_train(
        ["method=lqf", "model.norm=layer", "method.exclude=[body.1]", "trainer.max_epochs=1"], tmp_path / "exclude"
    )
    assert run(cfg).results["test/acc"] > 0.3  # K-FAC on the Linear layers, the LayerNorm kept at w0


def test_dp_optimizers_are_refused(tmp_path: Path) -> None:
    cfg = compose_train(["method=lqf", "optimizer=dp_sgd"], tmp_path)
    with pytest.raises(ConfigError, match="per-sample-gradient optimizer"):
        run(cfg)


def test_w0_is_the_trained_network_of_init_run_dir(tmp_path: Path) -> None:
    from trustml.run_record import RunRecord, load_model_from_run

    run_dir = tmp_path / "erm"
    outcome = run(compose_train(["trainer.max_epochs=1"], run_dir))
    record = RunRecord(run_dir)
    record.start(seed=0, seed_source="config", overrides=[], source_dir=run_dir)
    record.update(model_spec=outcome.model_spec)
    record.complete(outcome.results)
    cfg = compose_train(["method=lqf", f"method.init_run_dir={run_dir}", "method.leaky_relu_slope=0"], tmp_path / "l")
    from trustml.registry import build_plugin

    datamodule = build_plugin("data", cfg.data)
    datamodule.setup("fit")
    model = build_plugin("model", cfg.model, num_classes=datamodule.num_classes, input_dim=datamodule.input_dim)
    lqf = build_plugin(
        "method",
        cfg.method,
        model=model,
        optimizer=build_plugin("optimizer", cfg.optimizer),
        num_classes=datamodule.num_classes,
    )
    trained, _ = load_model_from_run(run_dir)
    x = datamodule.splits["test"].inputs[:32]
    torch.testing.assert_close(lqf.model(x), trained(x))  # delta = 0: f_lin = f(.; w0) = the old run's network
    cfg = compose_train(["method=lqf", f"method.init_run_dir={tmp_path / 'missing'}"], tmp_path / "m")
    with pytest.raises(Exception, match="missing"):
        run(cfg)
