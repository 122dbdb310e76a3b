"""Fixtures for the live surfaces: the real API on a real port, on the test MongoDB.

The WebSocket tests need a real socket (a client that stops reading must fill real TCP
buffers), so the app runs under aiohttp's `AppRunner` on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from live_helpers import TRAINERS, LiveApi, MakeLiveApi, TrackingLive
from pymongo import AsyncMongoClient

from service.api.app import create_app
from service.api.routing import UNDOCUMENTED
from service.api.ws import LIVE, LiveSettings
from service.client import GateQueueClient
from service.config import Settings
from service.mongo.connect import connect
from service.store import Store
from service.worker import Worker


@pytest.fixture
async def make_live_api(store: Store, mongo_uri: str) -> AsyncIterator[MakeLiveApi]:
    runners: list[web.AppRunner] = []

    async def make(
        *, token: str | None = None, live: LiveSettings | None = None, **settings_kw: Any
    ) -> LiveApi:
        settings = Settings(
            mongodb_uri=mongo_uri, db_name=store.db.name, api_token=token, **settings_kw
        )
        app = create_app(settings, store)
        # The app is not frozen until it starts: swap in the tracking Live (and test limits).
        tracking = app[LIVE] = TrackingLive(store, live)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        # Both change streams open, so no test's first events fall before them.
        for stream in tracking.fanout.streams.values():
            await stream.wait_opened(1)
        return LiveApi(f"http://{host}:{port}", app, tracking, store, settings)

    yield make
    for runner in runners:
        await runner.cleanup()
    for runner in runners:
        # Every status a route answered during the test is one its declaration documents.
        assert runner.app[UNDOCUMENTED] == [], runner.app[UNDOCUMENTED]


@pytest.fixture
async def live_api(make_live_api: MakeLiveApi) -> LiveApi:
    return await make_live_api()


@pytest.fixture
async def client(live_api: LiveApi) -> AsyncIterator[GateQueueClient]:
    async with GateQueueClient(live_api.url) as c:
        yield c


@pytest.fixture
async def start_worker(
    mongo_uri: str, store: Store, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """A real worker (own MongoDB client, as a worker process has) running the paced
    stand-in trainer; stopped at the end of the test."""
    started: list[tuple[Worker, asyncio.Task[None], AsyncMongoClient]] = []

    async def start(**options: Any) -> Worker:
        client = connect(mongo_uri)
        options.setdefault("trainer_cmd", [sys.executable, str(TRAINERS / "paced.py")])
        options.setdefault("env", {**os.environ, "GQ_EPOCH_S": "0.4"})
        worker = Worker(
            Store(client, store.db.name),
            worker_id=f"live-w{len(started) + 1}",
            slots=["cpu"],
            data_dir=tmp_path / f"worker{len(started) + 1}",
            lease_s=10.0,
            cancel_grace_s=1.0,
            shutdown_grace_s=0.0,
            stop_grace_s=1.0,
            **options,
        )
        task = asyncio.create_task(worker.run())
        started.append((worker, task, client))
        ready = asyncio.create_task(worker.ready.wait())
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
            raise AssertionError("the worker stopped during start-up")
        return worker

    yield start
    for worker, _, _ in started:
        worker.stop(now=True)
    for _, task, client in started:
        await task
        await client.close()
