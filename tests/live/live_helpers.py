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

from service.api.ws import Connection, Live
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


class TrackingLive(Live):
    """The app's `Live`, as the live tests install it: it also lets a test wait for the
    server side of its sockets (opened, or gone with their subscriptions), which a client
    cannot see (the server unsubscribes after the close handshake the client waits for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changed = asyncio.Condition()

    async def register(self, conn: Connection) -> None:
        await super().register(conn)
        async with self._changed:
            self._changed.notify_all()

    async def unregister(self, conn: Connection) -> None:
        await super().unregister(conn)
        async with self._changed:
            self._changed.notify_all()

    async def wait_idle(self) -> None:
        """Until no WebSocket is open."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self.connections)

    async def wait_for_tails(self, job_id: Any, count: int) -> list[Connection]:
        """Until `count` log tails of the job are open."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.log_tails(job_id)) >= count)
        return self.log_tails(job_id)

    def log_tails(self, job_id: Any) -> list[Connection]:
        return [c for c in self.connections if c.kind == "logs" and str(c.job_id) == str(job_id)]

    def subscriber_count(self) -> int:
        """Subscriptions the fanout still offers events to (its own bookkeeping)."""
        fanout = self.fanout
        return len(fanout._job_subs) + sum(len(s) for s in fanout._log_subs.values())


@dataclass
class LiveApi:
    url: str
    app: web.Application
    live: TrackingLive
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
