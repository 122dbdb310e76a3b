"""`serve()`, the production server path (`gatequeue serve`, `python -m service.api`): its
request-handler options reach aiohttp's handler. They once did not (given as
`handler_args`, aiohttp fell back to its defaults on every connection), which switched
aiohttp's own access log on beside ours and logged a warning per connection."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from service.api.app import MAX_FIELD_BYTES, serve
from service.config import Settings
from service.store import Store


async def test_serve_uses_its_handler_options_and_our_access_log_only(
    store: Store, mongo_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    settings = Settings(mongodb_uri=mongo_uri, db_name=store.db.name)
    server = asyncio.create_task(serve(settings, "127.0.0.1", 0, started=listening.set_result))
    try:
        url = await asyncio.wait_for(asyncio.shield(listening), 30)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):  # new connections: the fallback happened per connection
                async with http.get(f"{url}healthz", headers={"Connection": "close"}) as resp:
                    assert resp.status == 200
            too_long = {"X-Long": "x" * (MAX_FIELD_BYTES + 10)}
            async with http.get(f"{url}healthz", headers=too_long) as resp:
                assert resp.status == 400  # the HTTP parser's refusal (PARSER_REFUSAL)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    aiohttp_records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert not [r for r in aiohttp_records if "Failed to create request handler" in r.message]
    assert not [r for r in aiohttp_records if r.name == "aiohttp.access"]
