"""Fixtures for the live surfaces: the real API on a real port, on the test MongoDB.

The WebSocket tests need a real socket (a client that stops reading must fill real TCP
buffers), so the app runs under aiohttp's `AppRunner` on 127.0.0.1 with a free port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from live_helpers import LiveApi, MakeLiveApi

from service.api.app import create_app
from service.api.ws import LIVE, Live, LiveSettings
from service.client import GateQueueClient
from service.config import Settings
from service.store import Store


@pytest.fixture
async def make_live_api(store: Store, mongo_uri: str) -> AsyncIterator[MakeLiveApi]:
    runners: list[web.AppRunner] = []

    async def make(*, token: str | None = None, live: LiveSettings | None = None) -> LiveApi:
        settings = Settings(mongodb_uri=mongo_uri, db_name=store.db.name, api_token=token)
        app = create_app(settings, store)
        if live is not None:  # the app is not frozen until it starts: swap in test limits
            app[LIVE] = Live(store, live)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        await app[LIVE].fanout.wait_ready()
        return LiveApi(f"http://{host}:{port}", app, app[LIVE], store, settings)

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def live_api(make_live_api: MakeLiveApi) -> LiveApi:
    return await make_live_api()


@pytest.fixture
async def client(live_api: LiveApi) -> AsyncIterator[GateQueueClient]:
    async with GateQueueClient(live_api.url) as c:
        yield c
