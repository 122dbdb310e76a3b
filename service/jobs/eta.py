"""How long a run, and a sweep, still needs (docs/design.md, "Job fields": `etaS`).

A job's estimate is what its own epochs took: their mean times the epochs left, plus what
compiling and verifying its circuit is expected to take. The worker computes it with each
EPOCH line, where both are known, and stores it with `latestMetrics`. A sweep's is read
from its runs: the Running ones' own estimates, then the runs not started yet, in waves of
its parallelism, each taking the mean time of its finished runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The circuit step after training (docs/circuits.md): about 1 s for the seed's digits
# network of 13,336 gates, 16 s for an MNIST-size one of 96,000; growing a little faster
# than the gates.
CIRCUIT_REFERENCE_GATES = 13_336
CIRCUIT_REFERENCE_S = 1.0
CIRCUIT_EXPONENT = 1.4


def circuit_s(gates: int) -> float:
    """The expected seconds of the circuit step for a network of `gates` gates."""
    return CIRCUIT_REFERENCE_S * (max(0, gates) / CIRCUIT_REFERENCE_GATES) ** CIRCUIT_EXPONENT


def job_eta_s(epoch_seconds: Sequence[float], epoch: int, epochs: int, gates: int) -> float:
    """Seconds left after `epoch` of `epochs`, from the seconds the epochs seen so far took."""
    left = max(0, epochs - epoch)
    mean = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else 0.0
    return round(mean * left + circuit_s(gates), 1)


def sweep_eta_s(
    running_eta_s: Sequence[float | None],
    pending: int,
    run_seconds: Sequence[float],
    parallel: int,
) -> float | None:
    """Seconds until a sweep's last run ends: its Running runs' own estimates, and the
    `pending` runs not started, `parallel` at a time, each taking the mean of
    `run_seconds` (its finished runs'). None while nothing is known to estimate from."""
    known = [e for e in running_eta_s if e is not None]
    if pending == 0:
        return round(max(known), 1) if known else (None if running_eta_s else 0.0)
    if not run_seconds:
        return None
    mean = sum(run_seconds) / len(run_seconds)
    slots = max(1, parallel)
    # Pending runs start as slots free up: the first wave after the soonest running ends.
    waves = math.ceil(pending / slots)
    start = min(known) if known and len(running_eta_s) >= slots else 0.0
    return round(max([start + waves * mean, *known]), 1)
