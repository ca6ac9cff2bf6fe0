"""``cpu_allocator=retain``: freed tensor memory is reused by the next allocations instead of faulted back."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from trustml.cpu_allocator import configure_cpu_allocator
from trustml.errors import ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


#: One "step" run three times in a fresh process (a test worker's heap holds whatever earlier tests left in it):
#: allocate, fill and free 24 tensors of 16 MiB and 16 of 4 MiB (448 MiB, 114,688 pages); prints the third step's
#: minor page faults as a fraction of its pages (under retain the heap reaches its size within two steps: measured
#: 100%, 6%, then 0%).
_REPEATED_STEP = """
import resource, sys
import torch
from trustml.cpu_allocator import configure_cpu_allocator
configure_cpu_allocator(sys.argv[1])
sizes = [4 * 2**20] * 24 + [2**20] * 16
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(n) for n in sizes]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
step()
step()
print(step() / (sum(sizes) * 4 / resource.getpagesize()))
"""


def _faults_of_a_repeated_step(policy: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _REPEATED_STEP, policy], capture_output=True, text=True, check=True, timeout=120
    )
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc malloc settings: Linux with glibc only")
def test_retain_reuses_freed_memory_instead_of_faulting_it_back() -> None:
    assert _faults_of_a_repeated_step("retain") < 0.05
    # glibc's defaults map the large tensors fresh and trim the heap: most of the step is faulted back each time
    assert _faults_of_a_repeated_step("system") > 0.5


def test_an_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="cpu_allocator='tcmalloc' is not one of retain, system"):
        configure_cpu_allocator("tcmalloc")
    assert not configure_cpu_allocator("system")
