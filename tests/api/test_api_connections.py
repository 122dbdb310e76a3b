"""The bounds on connections (issue 26, defect 4; docs/security.md, "Connections"), through
`serve()`, the production server path, on a real port: head, body and keep-alive timeouts
(1 s here), the connection cap (the idle make room, a busy server answers 503), and the
WebSocket caps per token and in total.

Each test awaits what the server does (closing a socket, answering); the `wait_for` bounds
only turn a server that never does it (as before these bounds) into a failure, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from service import tokens
from service.api.app import serve
from service.config import Settings
from service.store import Store
from service.tokens import Role

# Long enough for anything the server must do first; a server without the bound never does.
BOUND_S = 15.0

Serve = Callable[..., Awaitable[URL]]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def serve_api(store: Store, mongo_uri: str) -> AsyncIterator[Serve]:
    tasks: list[asyncio.Task[None]] = []

    async def start(**overrides: Any) -> URL:
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        settings = Settings(mongodb_uri=mongo_uri, db_name=store.db.name, **overrides)
        task = asyncio.create_task(serve(settings, "127.0.0.1", 0, started=listening.set_result))
        tasks.append(task)
        waiting: set[asyncio.Future[Any]] = {listening, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        return URL(listening.result())

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def connect(url: URL) -> Conn:
    assert url.host is not None and url.port is not None
    return await asyncio.open_connection(url.host, url.port)


async def closed_by_server(conn: Conn) -> bytes:
    """Everything the server sends until it closes the connection."""
    reader, _ = conn
    return await asyncio.wait_for(reader.read(), BOUND_S)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def close(*conns: Conn) -> None:
    for _, writer in conns:
        writer.close()


async def test_idle_and_slow_head_connections_are_closed(serve_api: Serve) -> None:
    url = await serve_api(header_timeout_s=1.0)
    idle = await connect(url)
    slow = await connect(url)
    slow[1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickle = await connect(url)
    trickle[1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def keep_trickling() -> None:
        # A header line every 0.2 s: the head's deadline runs from its first byte, so
        # activity does not extend it (an inactivity timer would never fire here).
        with contextlib.suppress(ConnectionError):
            while not trickle[0].at_eof():
                trickle[1].write(b"X-Slow: 1\r\n")
                await trickle[1].drain()
                await asyncio.sleep(0.2)

    trickler = asyncio.create_task(keep_trickling())
    try:
        assert await closed_by_server(idle) == b""
        assert await closed_by_server(slow) == b""
        assert await closed_by_server(trickle) == b""
    finally:
        trickler.cancel()
        close(idle, slow, trickle)
    # A request that sends its head in time is answered, on a new connection as ever.
    async with aiohttp.ClientSession() as http, http.get(url / "healthz") as resp:
        assert resp.status == 200


async def test_a_slow_body_is_answered_408_and_closed(serve_api: Serve) -> None:
    url = await serve_api(body_timeout_s=1.0)
    conn = await connect(url)
    conn[1].write(
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    try:
        status, _, body = await read_response(conn[0])
        assert status == 408
        assert json.loads(body)["error"]["code"] == "body_timeout"
        assert await closed_by_server(conn) == b""
    finally:
        close(conn)


async def test_an_idle_kept_alive_connection_is_closed(serve_api: Serve) -> None:
    url = await serve_api(keepalive_timeout_s=1.0)
    conn = await connect(url)
    try:
        conn[1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = await read_response(conn[0])
        assert status == 200 and headers.get("connection", "keep-alive") != "close"
        assert await closed_by_server(conn) == b""
    finally:
        close(conn)


async def busy_post(url: URL) -> Conn:
    """A connection with a request in its handler: `Expect: 100-continue` is answered from
    inside it, and the body never comes (the body timeout is the default 30 s)."""
    conn = await connect(url)
    conn[1].write(
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    )
    line = await asyncio.wait_for(conn[0].readuntil(b"\r\n\r\n"), BOUND_S)
    assert line.startswith(b"HTTP/1.1 100"), line
    return conn


async def test_the_connection_cap_closes_the_idle_and_refuses_when_all_are_busy(
    serve_api: Serve,
) -> None:
    url = await serve_api(max_connections=4)  # so at most 2 WebSockets
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(url / "ws/jobs") for _ in range(2)]
        older, newer = await connect(url), await connect(url)
        conns = [older, newer]
        try:
            # At the cap, /healthz is answered: the connection idle the longest made room.
            probe = await connect(url)
            conns.append(probe)
            probe[1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await read_response(probe[0]))[0] == 200
            assert await closed_by_server(older) == b""
            # Requests in their handlers are never closed to make room: once the last idle
            # connections (`newer`, then the kept-alive probe) have given way, every
            # connection is busy and the next one is refused, clearly.
            conns.append(await busy_post(url))
            assert await closed_by_server(newer) == b""
            conns.append(await busy_post(url))
            assert await closed_by_server(probe) == b""
            refused = await connect(url)
            conns.append(refused)
            status, headers, body = await read_response(refused[0])
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            assert await closed_by_server(refused) == b""
            # The WebSockets were never touched.
            for ws in sockets:
                assert not ws.closed
        finally:
            close(*conns)
            for ws in sockets:
                await ws.close()


async def test_websockets_are_capped_per_token_and_in_total(
    serve_api: Serve, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    alice = tokens.add(path, "alice", Role.READ)
    bob = tokens.add(path, "bob", Role.READ)
    url = await serve_api(tokens_file=path, max_websockets=3, max_websockets_per_user=2)

    def auth(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    async with aiohttp.ClientSession() as http:
        open_ = [await http.ws_connect(url / "ws/jobs", headers=auth(alice)) for _ in range(2)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url / "ws/jobs", headers=auth(alice))
            assert refused.value.status == 503
            upgrade = {
                **auth(alice), "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }  # fmt: skip
            async with http.get(url / "ws/jobs", headers=upgrade) as resp:
                error = (await resp.json())["error"]
                assert resp.status == 503 and resp.headers["Retry-After"] == "5"
                assert error["code"] == "too_many_websockets"
                assert "token 'alice' has 2" in error["message"]
            open_.append(await http.ws_connect(url / "ws/jobs", headers=auth(bob)))  # bob's own
            async with http.get(url / "ws/jobs", headers={**upgrade, **auth(bob)}) as resp:
                error = (await resp.json())["error"]
                assert resp.status == 503 and "the server has 3" in error["message"]
        finally:
            for ws in open_:
                await ws.close()
