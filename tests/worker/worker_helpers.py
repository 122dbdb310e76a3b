"""Helpers shared by the worker tests (imported as `worker_helpers`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from bson import ObjectId
from job_helpers import insert_job

from service.jobs.record import Job, JobRecord
from service.jobs.status import Status
from service.store import Store
from service.worker import Worker
from service.worker.dispatch import offset_name
from trainer.options import TrainingOptions

MakeWorker = Callable[..., Awaitable[Worker]]

TRAINERS = Path(__file__).resolve().parent / "trainers"

# A valid, tiny request: what the API would have stored for it.
TINY_HP: dict[str, Any] = TrainingOptions(
    gateOptimizer="softmax", gates=40, networkLayers=2, residualLayers=0, epochs=2,
    dataset="digits", grouping=10, batchSize=64,
).model_dump()  # fmt: skip


def trainer(name: str, *flags: str) -> list[str]:
    """The command of one of the stand-in trainers in `trainers/`."""
    return [sys.executable, str(TRAINERS / f"{name}.py"), *flags]


async def insert(store: Store, hp: dict[str, Any] | None = None, **kw: Any) -> JobRecord:
    job, _ = await insert_job(store, dict(hp or TINY_HP), **kw)
    return job


async def wait_job(
    store: Store,
    job_id: ObjectId,
    predicate: Callable[[JobRecord], bool],
    *,
    deadline_s: float = 30.0,
    what: str = "condition",
) -> JobRecord:
    """The job once `predicate` holds: read it, then follow its change events (no polling).

    The stream is opened before the first read, so a change between the two is not missed.
    """
    async with asyncio.timeout(deadline_s):
        async with await store.jobs.collection.watch(
            [{"$match": {"documentKey._id": job_id}}],
            full_document="updateLookup",
            max_await_time_ms=200,
        ) as stream:
            job = await store.jobs.get(job_id)
            if job is not None and predicate(job):
                return job
            async for change in stream:
                doc = change.get("fullDocument")
                if doc is not None and predicate(job := Job.from_doc(doc)):
                    return job
    raise AssertionError(f"job {job_id}: {what} never held")  # pragma: no cover


def status_is(*statuses: Status) -> Callable[[JobRecord], bool]:
    return lambda job: job.status in statuses


def finished(job: JobRecord) -> bool:
    return job.finished


async def eventually(
    check: Callable[[], Awaitable[Any]], *, deadline_s: float = 15.0, every: float = 0.05
) -> Any:
    """For conditions no event announces (a process gone, a file written): re-check until
    true within a bounded deadline."""
    async with asyncio.timeout(deadline_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(every)


async def log_lines(store: Store, job_id: ObjectId) -> list[tuple[int, str, str]]:
    """(seq, stream, line) for every stored line, checking the batches tile the log."""
    out: list[tuple[int, str, str]] = []
    expected = 0
    async for batch in store.logs.collection.find({"jobId": job_id}).sort("seq", 1):
        assert batch["seq"] == expected, f"gap or overlap at seq {expected}: {batch['seq']}"
        assert batch["lines"], "empty batch"
        for i, line in enumerate(batch["lines"]):
            out.append((batch["seq"] + i, batch["stream"], line))
        expected += len(batch["lines"])
    return out


async def log_text(store: Store, job_id: ObjectId) -> list[str]:
    return [line for _, _, line in await log_lines(store, job_id)]


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def logged_value(store: Store, job_id: ObjectId, prefix: str) -> int:
    """A number the sleeper trainer printed (`pgid 123`), once it is in the stored log."""

    async def find() -> int | None:
        for line in await log_text(store, job_id):
            if line.startswith(prefix + " "):
                return int(line.split()[1])
        return None

    return await eventually(find)


async def stopped_with_token(
    store: Store, make_worker: MakeWorker, worker_id: str
) -> list[JobRecord]:
    """A worker that ran a job, stored its change-stream token and stopped; then three jobs
    inserted while no worker runs (returned): what a restart under that id must not miss."""
    first = await make_worker(worker_id=worker_id, trainer_cmd=trainer("epochs"))
    job = await insert(store)
    await wait_job(store, job.id, finished)
    await first.feed.tokens.flush()
    assert await store.offsets.load(offset_name(worker_id)) is not None
    first.stop()
    await first.stopped.wait()
    return [await insert(store) for _ in range(3)]
