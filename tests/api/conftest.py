"""Fixtures for the HTTP API: a live aiohttp server per test on a fresh database.

pytest-aiohttp is not used (pytest-asyncio runs every test on one session loop), so the
client is built here from aiohttp's own `TestServer`/`TestClient`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_helpers import MakeApi

from service.api.app import create_app
from service.api.routing import UNDOCUMENTED
from service.config import Settings
from service.store import Store


@pytest.fixture
async def make_api(store: Store) -> AsyncIterator[MakeApi]:
    """Build a live API (optionally with a token or another store); all closed at the end."""
    clients: list[TestClient] = []

    async def make(
        *,
        token: str | None = None,
        store: Store | None = None,
        route_modules: list[ModuleType] | None = None,
        ready_timeout_s: float = 2.0,
        **overrides: Any,
    ) -> TestClient:
        the_store = store if store is not None else default_store
        settings = Settings(
            mongodb_uri="mongodb://test", db_name=the_store.db.name, api_token=token, **overrides
        )
        app = create_app(
            settings, the_store, route_modules=route_modules, ready_timeout_s=ready_timeout_s
        )
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    default_store = store
    yield make
    for client in clients:
        await client.close()
    for client in clients:
        # Every status a route answered during the test is one its declaration documents.
        assert client.app[UNDOCUMENTED] == [], client.app[UNDOCUMENTED]  # type: ignore[index]


@pytest.fixture
async def api(make_api: MakeApi) -> TestClient:
    """The API as shipped (every route module), no token."""
    return await make_api()
