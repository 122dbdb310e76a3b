"""OpenMP's wait policy, set before torch loads its OpenMP runtime.

By default libgomp's idle threads spin before they sleep. On a machine whose cores are also
busy with other processes, a spinning thread holds the core that the thread it waits for
needs: we measured one training step of a 3340 x 4 network at 540 ms instead of 9 ms on a
loaded 2-core machine. Passive waiting costs a few microseconds per parallel region when
the machine is idle. An explicit OMP_WAIT_POLICY in the environment wins.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_waiting() -> bool:
    """Default OMP_WAIT_POLICY to PASSIVE; True if it will take effect (torch not loaded)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
