"""DPSGD / DPAdam: the vectorized private step against a per-sample loop, virtual batches, options, errors."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.privacy.privacy_helpers import SequenceClassifier, cross_entropy, feature_batch, mlp, sequence_batch, take
from trustml.errors import ConfigError
from trustml.privacy.engine import NoisePlan
from trustml.privacy.optimizers import DPAdamOptimizer, DPSGDOptimizer, PrivacyBudgetSpent
from trustml.privacy.options import DPAdamConfig, DPSGDConfig
from trustml.privacy.plugins import DPSGD, DPAdam
from trustml.registry import build_plugin, plugin_config


def _reference_update(
    model: nn.Module,
    batch: dict,
    sigma: float,
    bound: float,
    seed: int,
    denominator: float,
    mode: str = "flat",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The DP gradient by a loop over samples: clip each, sum, add seeded noise (from ``generator`` when given, so
    that consecutive steps continue one stream), divide."""
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(batch["y"].shape[0]):
        one = take(batch, i)
        loss = cross_entropy(model(one["x"]), one).sum()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        if mode == "flat":
            scales = dict.fromkeys(grads, min(1.0, bound / (norm + 1e-6)))
        elif mode == "automatic":  # Bu et al. 2023: g_i * C / (||g_i|| + gamma), gamma = 0.01; never left unscaled
            scales = dict.fromkeys(grads, bound / (norm + 0.01))
        else:
            layer_bound = bound / math.sqrt(len(grads))
            scales = {n: min(1.0, layer_bound / (float(g.norm()) + 1e-6)) for n, g in grads.items()}
        for name, g in grads.items():
            total[name] += g * scales[name]
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    return {
        name: (t + torch.normal(0.0, sigma * bound, size=t.shape, generator=generator)) / denominator
        for name, t in total.items()
    }


@pytest.mark.parametrize("engine", ["layerwise", "vmap"])
@pytest.mark.parametrize("mode", ["flat", "per_layer", "automatic"])
def test_private_sgd_step_equals_a_per_sample_loop(engine: str, mode: str) -> None:
    torch.manual_seed(0)
    model, batch = mlp().eval(), feature_batch(8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        loss_before = cross_entropy(model(batch["x"]), batch).mean()
    expected = _reference_update(model, batch, sigma=0.8, bound=0.5, seed=11, denominator=10.0, mode=mode)
    optimizer = DPSGDOptimizer(
        model.parameters(),
        DPSGDConfig(
            lr=0.3, noise_multiplier=0.8, max_grad_norm=0.5, clipping=mode, per_sample_gradients=engine, noise_seed=11
        ),
        NoisePlan(0.8, expected_batch_size=10.0),
    )

    logits, loss = optimizer.private_step(model, cross_entropy, batch)

    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.3 * expected[name], rtol=1e-4, atol=1e-6)
        assert p.grad is None
    assert logits.shape == (8, 3) and not logits.requires_grad
    assert optimizer.noisy_steps == 1
    torch.testing.assert_close(loss, loss_before)


@pytest.mark.parametrize("engine", ["layerwise", "vmap"])
@pytest.mark.parametrize("keep_from_bytes", [0, 640, 2**62])
def test_each_step_sums_from_zero_into_kept_or_new_buffers(engine: str, keep_from_bytes: int, monkeypatch) -> None:
    """Sums of at least ``KEEP_SUMS_FROM_BYTES`` are kept in one buffer per parameter across steps (no per-step
    allocation of a large table), the others allocated at each step: either way the second step's gradient is its
    own batch's, not added to the first's. 640 bytes: the 20 x 8 embedding table is kept, the rest is not."""
    monkeypatch.setattr(DPSGDOptimizer, "KEEP_SUMS_FROM_BYTES", keep_from_bytes)
    torch.manual_seed(0)
    model = SequenceClassifier().eval()
    batches = [sequence_batch(6, length=5), sequence_batch(6, length=5)]
    noise = torch.Generator().manual_seed(3)
    expected = [_reference_update(model, b, 0.5, 1.0, 0, 8.0, generator=noise) for b in batches]
    options = DPSGDConfig(lr=0.1, noise_multiplier=0.5, max_grad_norm=1.0, per_sample_gradients=engine, noise_seed=3)
    optimizer = DPSGDOptimizer(model.parameters(), options, NoisePlan(0.5, expected_batch_size=8.0))
    kept = {name for name, p in model.named_parameters() if p.numel() * p.element_size() >= keep_from_bytes}
    if keep_from_bytes == 640:
        assert kept == {"embed.weight"}
    storage = {}
    for step, batch in enumerate(batches):
        optimizer.private_gradients(model, cross_entropy, batch)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[step][name], rtol=1e-4, atol=1e-6)
            if name in kept:
                assert storage.setdefault(name, p.grad.data_ptr()) == p.grad.data_ptr(), name
        optimizer.zero_grad(set_to_none=True)
    assert set(optimizer._kept_sums) == kept


def test_private_adam_step_equals_adam_on_the_reference_gradient() -> None:
    torch.manual_seed(0)
    model, batch = SequenceClassifier().eval(), sequence_batch(6)
    twin = SequenceClassifier().eval()
    twin.load_state_dict(model.state_dict())
    expected = _reference_update(twin, batch, sigma=1.2, bound=1.0, seed=5, denominator=6)
    reference = torch.optim.Adam(twin.parameters(), lr=0.01, betas=(0.8, 0.99))
    for name, p in twin.named_parameters():
        p.grad = expected[name]
    reference.step()

    optimizer = DPAdamOptimizer(
        model.parameters(),
        DPAdamConfig(lr=0.01, beta1=0.8, beta2=0.99, noise_multiplier=1.2, noise_seed=5),
        NoisePlan(1.2, expected_batch_size=6.0),
    )
    optimizer.private_step(model, cross_entropy, batch)

    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("engine", ["layerwise", "vmap"])
def test_virtual_batches_give_the_same_update_as_one_physical_batch(engine: str) -> None:
    torch.manual_seed(0)
    whole, chunked = mlp().eval(), mlp().eval()
    chunked.load_state_dict(whole.state_dict())
    batch = feature_batch(10)
    common = {"lr": 0.1, "noise_multiplier": 1.0, "noise_seed": 3, "per_sample_gradients": engine, "momentum": 0.9}
    plan = NoisePlan(1.0, expected_batch_size=10.0)
    one = DPSGDOptimizer(whole.parameters(), DPSGDConfig(**common), plan)
    many = DPSGDOptimizer(chunked.parameters(), DPSGDConfig(max_physical_batch_size=3, **common), plan)
    for _ in range(2):
        logits_one, loss_one = one.private_step(whole, cross_entropy, batch)
        logits_many, loss_many = many.private_step(chunked, cross_entropy, batch)
    for p, q in zip(whole.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_one, logits_many, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_one, loss_many)


def test_noise_std_is_sigma_c_over_the_expected_batch_size() -> None:
    model = nn.Linear(100, 100, bias=False)
    nn.init.zeros_(model.weight)
    batch = {"x": torch.zeros(4, 100), "y": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)}
    optimizer = DPSGDOptimizer(
        model.parameters(),
        DPSGDConfig(lr=1.0, noise_multiplier=2.0, max_grad_norm=0.5, noise_seed=0),
        NoisePlan(2.0, expected_batch_size=8.0),
    )

    optimizer.private_step(model, lambda logits, b: logits.sum(1) * 0.0, batch)  # zero gradients: noise only

    assert abs(float(model.weight.std()) - 2.0 * 0.5 / 8.0) < 0.005


def test_an_empty_poisson_batch_still_takes_a_noise_only_step() -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = DPSGDOptimizer(
        model.parameters(),
        DPSGDConfig(lr=0.1, noise_multiplier=1.0, noise_seed=0),
        NoisePlan(1.0, expected_batch_size=4.0),
    )
    empty = {"x": torch.zeros(0, 5), "y": torch.zeros(0, dtype=torch.long), "index": torch.zeros(0, dtype=torch.long)}

    logits, _ = optimizer.private_step(model, cross_entropy, empty)

    assert logits.shape == (0, 3)
    assert optimizer.noisy_steps == 1
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_epsilon": None}, "noise_multiplier or optimizer.target_epsilon"),
        ({"noise_multiplier": 0.0}, "noise_multiplier must be positive"),
        ({"noise_multiplier": -1.0}, "noise_multiplier must be positive"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_epsilon": -2.0}, "target_epsilon must be positive"),
        ({"noise_multiplier": 1.0, "delta": 0.0}, "delta"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, "delta"),
        ({"noise_multiplier": 1.0, "clipping": "global"}, "clipping"),
        ({"noise_multiplier": 1.0, "accountant": "moments"}, "accountant"),
        ({"noise_multiplier": 1.0, "clipping": "automatic", "clipping_gamma": 0.0}, "clipping_gamma must be positive"),
        ({"noise_multiplier": 1.0, "per_sample_gradients": "loop"}, "per_sample_gradients"),
        ({"noise_multiplier": 1.0, "max_physical_batch_size": 0}, "max_physical_batch_size"),
        ({"noise_multiplier": 1.0, "betas": (0.9, 0.9)}, "betas"),
    ],
)
def test_bad_options_are_refused_with_the_option_name(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plugin_config("optimizer", {"_target_": "trustml.privacy.plugins.DPSGD", **options})


def test_the_composed_optimizer_options_are_checked_when_the_config_object_is_made() -> None:
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.structured(ConfigStore.instance().repo["optimizer"]["dp_sgd.yaml"].node)
    node.noise_multiplier = -1.0
    with pytest.raises(ConfigError, match="noise_multiplier must be positive"):
        plugin_config("optimizer", node)
    node.noise_multiplier = 1.0
    assert plugin_config("optimizer", node).noise_multiplier == 1.0


def test_batchnorm_models_are_refused_with_the_replacement() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0), NoisePlan(1.0, 4.0))
    with pytest.raises(ConfigError, match=r"'1' \(BatchNorm1d\).*GroupNorm or LayerNorm"):
        optimizer.private_step(model, cross_entropy, feature_batch(4))


def test_a_step_without_an_expected_batch_size_is_refused_not_divided_by_the_realised_size() -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0))
    message = r"without a noise plan.*expected batch size L = qN.*NoisePlan\(noise_multiplier, expected_batch_size\)"
    with pytest.raises(ConfigError, match=message):
        optimizer.private_step(model, cross_entropy, feature_batch(4))
    assert optimizer.noisy_steps == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    for bad in (0.0, -3.0):
        with pytest.raises(ConfigError, match="expected batch size must be positive"):
            NoisePlan(1.0, expected_batch_size=bad)


def _noise_of_one_step(seed: int, **options: object) -> torch.Tensor:
    """The update of a zero-gradient step (noise only) of a DP-SGD built after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model = nn.Linear(20, 20, bias=False)
    nn.init.zeros_(model.weight)
    optimizer = DPSGDOptimizer(
        model.parameters(),
        DPSGDConfig(lr=1.0, noise_multiplier=1.0, **options),
        NoisePlan(1.0, expected_batch_size=4.0),
    )
    batch = {"x": torch.zeros(4, 20), "y": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)}
    optimizer.private_step(model, lambda logits, b: logits.sum(1) * 0.0, batch)
    return model.weight.detach().clone()


def test_the_noise_is_secret_unless_the_run_is_deterministic() -> None:
    # by default the global (run-seeded) generator does not determine the noise
    assert not torch.equal(_noise_of_one_step(0), _noise_of_one_step(0))
    # deterministic: the same run seed gives the same noise, another seed other noise
    torch.testing.assert_close(_noise_of_one_step(0, deterministic=True), _noise_of_one_step(0, deterministic=True))
    assert not torch.equal(_noise_of_one_step(0, deterministic=True), _noise_of_one_step(1, deterministic=True))
    # an explicit noise_seed wins over both
    torch.testing.assert_close(_noise_of_one_step(0, noise_seed=7), _noise_of_one_step(1, noise_seed=7))
    torch.testing.assert_close(
        _noise_of_one_step(0, noise_seed=7, deterministic=True), _noise_of_one_step(1, noise_seed=7)
    )


def test_the_model_is_checked_on_the_first_non_empty_batch() -> None:
    class SequenceFirst(nn.Module):
        """Linear on [T, B, d] with T == B == 4: its per-sample gradients would be those of time steps."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.transpose(0, 1)).mean(0)

    model = SequenceFirst()
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0), NoisePlan(1.0, 4.0))
    no_labels = torch.zeros(0, dtype=torch.long)
    empty = {"x": torch.zeros(0, 4, 5), "y": no_labels, "index": no_labels}
    optimizer.private_step(model, cross_entropy, empty)  # nothing to check the attribution on
    batch = {"x": torch.randn(4, 4, 5), "y": torch.tensor([0, 1, 2, 0]), "index": torch.arange(4)}
    with pytest.raises(ConfigError, match="'proj.weight' \\(layer 'proj'\\) to the wrong samples"):
        optimizer.private_step(model, cross_entropy, batch)


def test_target_epsilon_without_calibration_cannot_step() -> None:
    optimizer = DPSGD(DPSGDConfig(target_epsilon=3.0)).build(mlp().parameters())
    with pytest.raises(ConfigError, match="PrivacyAccountantCallback .* plans it before the optimizer is built"):
        optimizer.private_step(mlp(), cross_entropy, feature_batch(4))


def test_no_step_after_the_budget_is_spent() -> None:
    model = mlp()
    optimizer = DPSGDOptimizer(
        model.parameters(), DPSGDConfig(noise_multiplier=1.0, target_epsilon=1.0), NoisePlan(1.0, 4.0)
    )
    optimizer.budget_spent = True
    with pytest.raises(PrivacyBudgetSpent, match="target_epsilon=1.0 is spent"):
        optimizer.private_step(model, cross_entropy, feature_batch(4))


def test_optimizer_parameters_must_belong_to_the_model() -> None:
    optimizer = DPSGDOptimizer(mlp().parameters(), DPSGDConfig(noise_multiplier=1.0), NoisePlan(1.0, 4.0))
    with pytest.raises(ConfigError, match="build the optimizer from the trainable parameters"):
        optimizer.private_step(mlp(), cross_entropy, feature_batch(4))


def test_registered_configs_build_optimizer_plugins() -> None:
    from hydra.core.config_store import ConfigStore

    from trustml.registry import plugins

    assert {"dp_sgd", "dp_adam"} <= set(plugins("optimizer"))
    repo = ConfigStore.instance().repo["optimizer"]
    for name, plugin_cls, cls in (("dp_sgd", DPSGD, DPSGDOptimizer), ("dp_adam", DPAdam, DPAdamOptimizer)):
        node = OmegaConf.structured(repo[f"{name}.yaml"].node)
        node.noise_multiplier = 1.5
        factory = build_plugin("optimizer", node)
        assert isinstance(factory, plugin_cls) and factory.needs_per_sample_gradients
        optimizer = factory(mlp().parameters())
        assert isinstance(optimizer, cls) and optimizer.noise_multiplier == 1.5
