"""Process settings for a training run, applied before torch loads.

OpenMP's wait policy: by default libgomp's idle threads spin before they sleep. On a
machine whose cores are also busy with other processes, a spinning thread holds the core
that the thread it waits for needs: we measured one training step of a 3340 x 4 network at
540 ms instead of 9 ms on a loaded 2-core machine. Passive waiting costs a few microseconds
per parallel region when the machine is idle. An explicit OMP_WAIT_POLICY wins.

glibc's allocator: torch allocates each layer's (gates, batch) activations and gradients
afresh every step; glibc hands blocks that large back to the kernel when freed, and every
step then pays a page fault per 4 KiB to get them again (12k faults per step at 32000 x 4,
batch 128). A fixed mmap threshold and no trimming keep freed blocks for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from trainer import environment

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the reusable heap


def _keep_freed_memory() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BELOW) == 1


def prepare_process() -> bool:
    """Apply both settings; True if torch was not loaded yet (the wait policy applies)."""
    environment.set_default("OMP_WAIT_POLICY", "PASSIVE")
    _keep_freed_memory()
    return "torch" not in sys.modules
