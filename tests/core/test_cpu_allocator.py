"""``cpu_allocator=retain``: freed tensor memory is reused by the next allocations instead of faulted back."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from trustml.cpu_allocator import configure_cpu_allocator
from trustml.errors import ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _faults_of_one_step(sizes: list[int]) -> int:
    """Minor page faults of allocating, filling and freeing tensors of ``sizes`` elements (one "step")."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(n) for n in sizes]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not GLIBC, reason="glibc malloc settings: Linux with glibc only")
def test_retain_reuses_freed_memory_instead_of_faulting_it_back() -> None:
    assert configure_cpu_allocator("retain")
    sizes = [4 * 2**20] * 24 + [2**20] * 16  # 24 tensors of 16 MiB and 16 of 4 MiB: 448 MiB, 114,688 pages
    _faults_of_one_step(sizes)  # the heap grows to the step's peak once
    repeated = _faults_of_one_step(sizes)
    assert repeated < 0.05 * sum(sizes) * 4 / resource.getpagesize(), repeated


def test_an_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="cpu_allocator='tcmalloc' is not one of retain, system"):
        configure_cpu_allocator("tcmalloc")
    assert not configure_cpu_allocator("system")
