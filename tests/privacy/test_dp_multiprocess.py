"""DP-SGD across processes: sharded Poisson sampling, one noise draw per step, one-process accounting.

Two gloo processes (``torch.multiprocessing``) take DP steps with the trustml DP optimizer and are compared with
one process on the same seed: same update up to float tolerance, noise of std ``sigma * C / L`` (not ``sqrt(2)``
times it). Settings that would break Poisson sampling or the accounting on several processes, and mixed
precision, are refused before training. The whole Lightning ``strategy=ddp`` run is in ``test_dp_ddp.py``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tests.privacy.privacy_helpers import cross_entropy, mlp, reference_per_sample_grads
from trustml.data.base import Split
from trustml.errors import ConfigError
from trustml.privacy.callback import _check_process_shards, _check_same_training_set
from trustml.privacy.engine import NoisePlan
from trustml.privacy.mechanism import clipped_sum
from trustml.privacy.optimizers import DPSGDOptimizer
from trustml.privacy.options import DPSGDConfig
from trustml.privacy.per_sample import MaterializedGradients
from trustml.privacy.plugins import DPSGD, DPAdam
from trustml.privacy.sampling import PoissonBatchSampler

DDP = {"strategy": "ddp", "devices": 2, "use_distributed_sampler": False}
#: fork where there is one: the processes inherit the imported modules (spawn re-imports torch and Lightning)
START_METHOD = "fork" if "fork" in __import__("multiprocessing").get_all_start_methods() else "spawn"


def config(federation: str = "trustml.federation.centralized.Centralized", **trainer: object) -> object:
    base = {"accelerator": "cpu", "devices": 1, "max_epochs": 1}
    return OmegaConf.create(
        {"optimizer": {"lr": 0.1}, "trainer": {**base, **trainer}, "federation": {"_target_": federation}}
    )


# --- what is accepted and refused before training ---------------------------------------------------------


@pytest.mark.parametrize(
    "trainer",
    [
        DDP,
        {**DDP, "use_distributed_sampler": "false"},
        {"devices": 2, "use_distributed_sampler": False},  # strategy auto picks DDP
        {"strategy": "ddp", "num_nodes": 2, "use_distributed_sampler": False},
        {"strategy": "ddp_find_unused_parameters_true", "devices": 4, "use_distributed_sampler": False},
        {},
        {"strategy": "auto"},
        {"devices": "auto"},
        {"devices": [3], "accelerator": "gpu"},
    ],
)
def test_dp_on_ddp_processes_and_on_one_device_is_accepted(trainer: dict) -> None:
    DPSGD.validate_config(config(**trainer))
    DPAdam.validate_config(config(**trainer))


@pytest.mark.parametrize(
    ("trainer", "named"),
    [
        ({"strategy": "ddp", "devices": 2}, "trainer.strategy=ddp"),
        ({"devices": 2}, "trainer.devices=2"),
        ({"devices": -1, "use_distributed_sampler": True}, "trainer.devices=-1"),
        ({"num_nodes": 2}, "trainer.num_nodes=2"),
    ],
)
def test_ddp_with_lightnings_per_device_sampler_is_refused_naming_the_fix(trainer: dict, named: str) -> None:
    message = rf"optimizer=DPSGD on several processes \({named}\) needs trainer.use_distributed_sampler=false.*"
    message += r"not Poisson sampling.*\+trainer.use_distributed_sampler=false"
    with pytest.raises(ConfigError, match=message):
        DPSGD.validate_config(config(**trainer))


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "fsdp", "deepspeed"])
def test_strategies_other_than_subprocess_ddp_are_refused(strategy: str) -> None:
    message = rf"supports trainer.strategy=ddp only, got trainer.strategy={strategy}"
    with pytest.raises(ConfigError, match=message):
        DPAdam.validate_config(config(strategy=strategy, devices=2, use_distributed_sampler=False))


def test_a_federation_on_several_processes_is_refused() -> None:
    with pytest.raises(ConfigError, match="federation simulates its devices in one process.*trainer.devices=1"):
        DPSGD.validate_config(config("trustml.federation.strategies.FedAvg", **DDP))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16"])
def test_mixed_precision_is_refused_before_training_and_inside_autocast(precision: str) -> None:
    message = rf"do not support mixed precision \(trainer.precision={precision}\).*trainer.precision=32-true"
    with pytest.raises(ConfigError, match=message):
        DPSGD.validate_config(config(precision=precision))
    DPSGD.validate_config(config(precision="32-true"))


def test_a_private_step_under_autocast_is_refused() -> None:
    from tests.privacy.privacy_helpers import feature_batch

    model = mlp()
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0), NoisePlan(1.0, 6.0))
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ConfigError, match="torch.autocast on cpu"):
        optimizer.private_step(model, cross_entropy, feature_batch())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    optimizer.private_step(model, cross_entropy, feature_batch())  # full precision steps
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


# --- the training loader of each process ---------------------------------------------------------------------


def test_the_shards_of_a_poisson_draw_partition_the_one_process_batches() -> None:
    one = list(PoissonBatchSampler(1000, 0.05, num_batches=20, seed=4))
    shards = [list(PoissonBatchSampler(1000, 0.05, num_batches=20, seed=4, shard=r, num_shards=3)) for r in range(3)]
    for step, batch in enumerate(one):
        parts = [shard[step] for shard in shards]
        assert sorted(i for part in parts for i in part) == batch  # the union is the one-process batch
        assert all(i % 3 == r for r, part in enumerate(parts) for i in part)  # disjoint shards
    # secret seeds per process: each shard is still sampled at the global rate (together a Poisson sample)
    own = [PoissonBatchSampler(3000, 0.1, num_batches=50, shard=r, num_shards=2) for r in range(2)]
    for sampler in own:
        sizes = torch.tensor([len(b) for b in sampler], dtype=torch.float)
        assert sizes.mean().item() == pytest.approx(150.0, rel=0.05)  # 1500 indices of the shard at q = 0.1
    with pytest.raises(ConfigError, match="shard 2 is not one of the 2 processes' shards"):
        PoissonBatchSampler(10, 0.5, shard=2, num_shards=2)


def _trainer(loader: DataLoader, world: int = 2, rank: int = 1) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, global_rank=rank, train_dataloader=loader, datamodule=None)


def test_a_per_device_sampler_under_ddp_is_refused_at_train_start() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    distributed = DataLoader(dataset, batch_size=4, sampler=DistributedSampler(dataset, num_replicas=2, rank=1))
    with pytest.raises(ConfigError, match="process 1's training loader uses DistributedSampler.*per-device sampler"):
        _check_process_shards(_trainer(distributed))
    unsharded = DataLoader(dataset, batch_sampler=PoissonBatchSampler(20, 0.2, seed=0))
    with pytest.raises(ConfigError, match="shard=1, num_shards=2.*uses PoissonBatchSampler of shard 0 of 1"):
        _check_process_shards(_trainer(unsharded))
    _check_process_shards(_trainer(distributed, world=1, rank=0))  # one process: nothing to shard


# --- two processes against one ---------------------------------------------------------------------------------

N, RATE, SIGMA, WIDE_BATCH = 40, 0.25, 1.0, 32


def _steps(shard: int, shards: int) -> dict[str, torch.Tensor]:
    """Three DP-SGD steps on process ``shard`` of ``shards`` (its shard of each Poisson batch), then one step of a
    wide linear layer (10,100 weights) on its shard of a fixed batch of 32: the final MLP weights and that update."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 5, generator=generator), torch.randint(0, 3, (N,), generator=generator)
    torch.manual_seed(0)
    model = mlp()
    options = DPSGDConfig(lr=0.5, noise_multiplier=SIGMA, noise_seed=5)
    optimizer = DPSGDOptimizer(model.parameters(), options, NoisePlan(SIGMA, RATE * N, shards))
    for indices in PoissonBatchSampler(N, RATE, num_batches=3, seed=11, shard=shard, num_shards=shards):
        index = torch.tensor(indices, dtype=torch.long)
        optimizer.private_step(model, cross_entropy, {"x": x[index], "y": y[index], "index": index})
    out = {f"mlp.{name}": p.detach().clone() for name, p in model.named_parameters()}
    wide, (xw, yw, mine) = _wide_layer(), _wide_batch()
    mine = mine[mine % shards == shard]
    before = wide.weight.detach().clone()
    options = DPSGDConfig(lr=1.0, noise_multiplier=2.0, noise_seed=9)
    optimizer = DPSGDOptimizer(wide.parameters(), options, NoisePlan(2.0, float(WIDE_BATCH), shards))
    optimizer.private_step(wide, cross_entropy, {"x": xw[mine], "y": yw[mine], "index": mine})
    out["wide_update_times_L"] = (before - wide.weight.detach()) * WIDE_BATCH
    return out


def _wide_layer() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(100, 100, bias=False)


def _wide_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(WIDE_BATCH, 100, generator=generator)
    return x, torch.randint(0, 100, (WIDE_BATCH,), generator=generator), torch.arange(WIDE_BATCH)


def _worker(rank: int, world: int, port: int, out: str, job: str = "steps") -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if job == "steps":
            torch.save(_steps(rank, world), Path(out) / f"rank{rank}.pt")
        else:  # process 1 holds one training sample fewer (as with splits drawn from different seeds)
            n = 10 - rank if job == "different_data" else 10
            train = Split(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), torch.arange(n))
            trainer = SimpleNamespace(datamodule=SimpleNamespace(splits={"train": train}))
            try:
                _check_same_training_set(trainer)
                message = "accepted"
            except ConfigError as exc:
                message = str(exc)
            (Path(out) / f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_take_the_one_process_step_with_the_noise_drawn_once(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method=START_METHOD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = _steps(0, 1)
    for name, value in one.items():  # (a) every process holds the one-process result (float tolerance)
        for rank in ranks:
            torch.testing.assert_close(rank[name], value, rtol=1e-5, atol=1e-6)
    # (c) noise added once per step: update * L - sum_i clip(g_i) is N(0, sigma^2 C^2) with sigma C = 2, where a
    # noise draw on each of the two processes would give sqrt(2) * 2
    wide, (xw, yw, index) = _wide_layer(), _wide_batch()
    params = dict(wide.named_parameters())
    grads = reference_per_sample_grads(wide, params, cross_entropy, {"x": xw, "y": yw, "index": index})
    clean = clipped_sum(MaterializedGradients(grads), 1.0)["weight"]
    noise = ranks[0]["wide_update_times_L"] - clean
    assert noise.mean().abs().item() < 0.1
    assert noise.std().item() == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("job", ["same_data", "different_data"])
def test_processes_with_different_training_sets_are_refused(job: str, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), job), nprocs=2, start_method=START_METHOD)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if job == "same_data":
        assert messages == ["accepted", "accepted"]
    else:
        assert all("hold different training sets (sizes [10, 9]" in m and "seed=<int>" in m for m in messages)


def test_a_step_planned_for_several_processes_outside_their_process_group_is_refused() -> None:
    from tests.privacy.privacy_helpers import feature_batch

    model = mlp()
    plan = NoisePlan(1.0, 6.0, processes=2)
    optimizer = DPSGDOptimizer(model.parameters(), DPSGDConfig(noise_multiplier=1.0, noise_seed=0), plan)
    with pytest.raises(ConfigError, match="noise plan is for 2 training processes but this process belongs to no"):
        optimizer.private_step(model, cross_entropy, feature_batch())
