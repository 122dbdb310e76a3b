"""Liveness for orchestrators: the file's mtime moves only while the event loop turns.

A probe that reads the mtime (docs/deploy.md, "Worker heartbeat") catches a worker whose
loop is wedged, which a process-exists check cannot. It deliberately says nothing about
MongoDB: a database outage must not make every worker restart in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_S = 5.0


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a"):
        pass
    os.utime(path)


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


async def run_heartbeat(path: Path, interval_s: float = DEFAULT_INTERVAL_S) -> None:
    """Touch `path` now and every `interval_s` until cancelled; remove it on the way out.

    The touch is done on the loop itself, not in a thread: the file must stop moving when
    the loop stops (the contract in docs/deploy.md). It is a local tmpfs/emptyDir file, so
    the syscall costs microseconds. A failed touch is logged, not fatal: the probe notices.
    """
    try:
        while True:
            try:
                touch(path)
            except OSError as exc:
                log.warning("heartbeat touch failed", path=str(path), error=repr(exc))
            await asyncio.sleep(interval_s)
    finally:
        remove(path)
