"""DP-SGD across processes (data parallel): one Poisson sample and one noise draw per step for all processes.

With ``P`` processes (Lightning's ``trainer.strategy=ddp``), a step of DP-SGD must be the step one process would
take on the whole training set (as Opacus' ``DistributedDPOptimizer`` does):

- *sampling*: Poisson sampling at the global rate ``q = L / N`` decomposes over a partition of the data. Process
  ``r`` keeps index ``i`` when ``i mod P = r`` and it falls in its Poisson draw at rate ``q``
  (:class:`~trustml.privacy.sampling.PoissonBatchSampler` with ``shard=r, num_shards=P``); every index belongs to
  exactly one shard, so the union of the processes' batches holds each index independently with probability
  ``q``: a Poisson sample of the whole training set, which is what the accountant counts (``q`` over the global
  ``N``, one step per update);
- *noise*: each process computes the sum of its samples' clipped gradients; the sums are all-reduced
  (:func:`all_reduce_sum`) after process 0 alone has added ``N(0, sigma^2 C^2 I)`` to its own, so the noise is
  drawn once per step for the global batch, and every process ends with the same noisy sum
  ``sum_{i in B} clip_C(g_i) + N(0, sigma^2 C^2 I)``, which it divides by the global expected batch size ``L``.

Lightning's DDP wrapper does not average the gradients a second time: under manual optimization (which a
per-sample-gradient optimizer uses) it reduces gradients only in ``manual_backward``, and the DP optimizer
never calls it (its per-sample engines use ``torch.autograd.grad``/``torch.func``, not ``backward``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from trustml.errors import ConfigError


def process_rank_and_count() -> tuple[int, int]:
    """``(rank, world size)`` of this process in torch's default process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_process_group(processes: int) -> int:
    """This process's rank, after checking that the default process group has the ``processes`` the plan is for."""
    rank, world = process_rank_and_count()
    if world != processes:
        raise ConfigError(
            f"the DP noise plan is for {processes} training processes but this process belongs to "
            f"{'no process group' if world == 1 else f'a process group of {world}'}; a DP optimizer planned for "
            "several processes must step inside the trainer's DDP processes (trainer.strategy=ddp)"
        )
    return rank


def all_reduce_sum(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{name: sum over processes of tensors[name]}``, reduced as one flat buffer (one collective per step)."""
    import torch.distributed as dist

    names = list(tensors)
    flat = torch.cat([tensors[name].reshape(-1) for name in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    reduced, start = {}, 0
    for name in names:
        size = tensors[name].numel()
        reduced[name] = flat[start : start + size].view_as(tensors[name])
        start += size
    return reduced
