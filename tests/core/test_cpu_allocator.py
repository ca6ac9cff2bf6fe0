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
#: allocate and fill 24 tensors of 16 MiB and 16 of 4 MiB (448 MiB), then free them; prints, per step, the fraction
#: of the step's memory that leaves the process's resident set when the step frees it, i.e. that the next step has
#: to fault back from the kernel, zero-filled. Resident memory, not page faults, because with transparent huge pages
#: set to ``always`` one fault brings in 2 MiB. glibc's defaults adapt their mmap threshold to the sizes they see
#: freed, so whether they give memory back in a later step depends on the step's pattern of allocations (measured:
#: 100% of the first step, then 0% for this one; about 66,000 pages per step of a MiniLM DP step, see the module);
#: the first step of a fresh process is where they certainly do.
_REPEATED_STEP = """
import os, sys
import torch
from trustml.cpu_allocator import configure_cpu_allocator
configure_cpu_allocator(sys.argv[1])
sizes = [4 * 2**20] * 24 + [2**20] * 16
def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def step():
    tensors = [torch.ones(n) for n in sizes]
    peak = resident_bytes()
    del tensors
    return (peak - resident_bytes()) / (sum(sizes) * 4)
print(*(step() for _ in range(3)))
"""


def _returned_by_three_steps(policy: str) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", _REPEATED_STEP, policy], capture_output=True, text=True, check=True, timeout=120
    )
    return [float(fraction) for fraction in done.stdout.strip().splitlines()[-1].split()]


@pytest.mark.skipif(not GLIBC, reason="glibc malloc settings: Linux with glibc only")
def test_retain_keeps_freed_tensor_memory_in_the_process() -> None:
    assert max(_returned_by_three_steps("retain")) < 0.05
    # glibc's defaults map a fresh process's large tensors and unmap them when freed: the step goes back to the kernel
    assert _returned_by_three_steps("system")[0] > 0.5


def test_an_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="cpu_allocator='tcmalloc' is not one of retain, system"):
        configure_cpu_allocator("tcmalloc")
    assert not configure_cpu_allocator("system")
