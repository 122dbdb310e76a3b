"""Helpers shared by the live tests: a worker-like writer and the API handle type."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from job_helpers import insert_job

from service.api.ws import Live
from service.config import Settings
from service.jobs.record import JobRecord, WorkerRef
from service.jobs.status import Status
from service.store import Store

TINY_JOB: dict[str, Any] = {
    "gateOptimizer": "softmax",
    "gates": 40,
    "networkLayers": 1,
    "grouping": 10,
    "epochs": 2,
}
TRAINERS = Path(__file__).resolve().parent / "trainers"
WORKER = WorkerRef(id="test-worker", host="localhost", gpu="cpu")


@dataclass
class LiveApi:
    url: str
    app: web.Application
    live: Live
    store: Store
    settings: Settings


MakeLiveApi = Callable[..., Awaitable[LiveApi]]


async def running_job(store: Store, **hp: Any) -> JobRecord:
    """A job as a worker holds it right after a claim."""
    job, _ = await insert_job(store, {**TINY_JOB, **hp})
    claimed = await store.jobs.claim(job, WORKER, lease_s=60)
    assert claimed is not None
    return claimed


async def write_lines(
    store: Store, job: JobRecord, lines: list[str], batch: int, seq: int = 0
) -> int:
    """Append like the worker's log sink: one writer, consecutive batches, no gaps."""
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        await store.logs.append(job.id, "stdout", chunk, expected_seq=seq)
        seq += len(chunk)
    return seq


async def finish(store: Store, job: JobRecord, status: Status = Status.SUCCEEDED) -> JobRecord:
    current = await store.jobs.get(job.id)
    assert current is not None
    done = await store.jobs.finish(
        current, status, exit_code=0 if status is Status.SUCCEEDED else 1
    )
    assert done is not None
    return done


async def gatequeue(api: str | None, *args: str) -> tuple[int, str, str]:
    """The `gatequeue` command as a user runs it: a subprocess; (exit code, stdout, stderr)."""
    env = {**os.environ, "GATEQUEUE_LOG_FORMAT": "json", "COLUMNS": "200"}
    env.pop("GATEQUEUE_API_TOKEN", None)
    if api is not None:
        env["GATEQUEUE_API"] = api
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
