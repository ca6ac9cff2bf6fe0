"""How the C heap (glibc ``malloc``, which PyTorch's CPU tensors come from) hands freed memory back to the OS.

With glibc's defaults a training step that frees more than the trim threshold (at most 64 MiB) at the top of the
heap returns those pages to the OS, and tensors over the mmap threshold (at most 32 MiB) are mapped and unmapped
each time: the next step takes them back page by page, each page fault zero-filled by the kernel. A step that
keeps more activations alive (per-sample gradients: every layer's inputs and output gradients until the clipping
factors are known) re-faults hundreds of MiB per step; measured on MiniLM with every weight trainable, 32 x 64
tokens, one thread, about 66,000 page faults and 0.16 s of system time per DP step (8-10% of a step), against none
for a non-private step once the heap has grown (``experiments/dp/README.md``, section 4).

``retain`` (the default of ``cpu_allocator``) keeps freed memory in the process: the mmap threshold fixed at
glibc's maximum (32 MiB, so tensors below it come from the heap and are reused) and trimming off. The process's
resident memory then stays at its peak instead of shrinking between steps, as with a caching allocator (jemalloc,
tcmalloc, which PyTorch's CPU performance guide recommends through ``LD_PRELOAD``; CUDA's caching allocator does
the same on GPU). ``system`` leaves the allocator as the process found it. Elsewhere than Linux/glibc both are the
system's allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from trustml.errors import ConfigError

#: ``cpu_allocator`` values.
CPU_ALLOCATORS = ("retain", "system")
#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: The largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MAX_MMAP_THRESHOLD = 32 * 2**20
#: A trim threshold no heap reaches: freed memory is never returned (``mallopt`` takes an ``int``).
NO_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def configure_cpu_allocator(policy: str) -> bool:
    """Apply ``cpu_allocator=policy`` (module doc) to this process; True when glibc's settings were changed.

    The settings are process-wide: with ``retain`` every later job of a ``-m`` sweep run in the same process keeps
    them, whatever its own ``cpu_allocator``.
    """
    if policy not in CPU_ALLOCATORS:
        raise ConfigError(f"cpu_allocator={policy!r} is not one of {', '.join(CPU_ALLOCATORS)}")
    libc = _glibc() if policy == "retain" else None
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM))
