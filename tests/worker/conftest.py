"""Fixtures for the worker tests: workers built in-process on the test's fresh database.

Each worker gets its own MongoDB client, as a real worker process would, so a test can cut
its connections without disturbing the test's own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import MakeWorker

from service.mongo.connect import connect
from service.store import Store
from service.worker import Worker


@pytest.fixture
async def make_worker(mongo_uri: str, db_name: str, tmp_path: Path) -> AsyncIterator[MakeWorker]:
    """Start a worker (fast timings unless overridden); every one is stopped at the end."""
    started: list[tuple[Worker, asyncio.Task[None], Any]] = []

    async def make(
        *, uri: str | None = None, worker_id: str | None = None, wait_ready: bool = True,
        **options: Any,
    ) -> Worker:  # fmt: skip
        client = connect(uri or mongo_uri)
        n = len(started) + 1
        options.setdefault("slots", ["cpu"])
        options.setdefault("lease_s", 5.0)
        options.setdefault("cancel_grace_s", 1.0)
        options.setdefault("shutdown_grace_s", 0.0)
        options.setdefault("stop_grace_s", 1.0)
        options.setdefault("data_dir", tmp_path / f"worker{n}")
        worker = Worker(Store(client, db_name), worker_id=worker_id or f"w{n}", **options)
        task = asyncio.create_task(worker.run(), name=f"test-worker-{n}")
        started.append((worker, task, client))
        if wait_ready:
            async with asyncio.timeout(30):
                ready = asyncio.create_task(worker.ready.wait())
                done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    ready.cancel()
                    task.result()
                    raise AssertionError("worker stopped during start-up")
        return worker

    yield make
    for worker, _task, _client in started:
        worker.stop(now=True)
    for _worker, task, client in started:
        try:
            async with asyncio.timeout(30):
                await task
        finally:
            await client.close()
