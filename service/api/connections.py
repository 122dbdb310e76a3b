"""Bounds on the API's connections (docs/security.md, "Connections").

Without them a client that opens sockets and sends nothing (or a header a byte a minute)
holds a descriptor for as long as it likes, and once the process runs out of descriptors
nothing is accepted any more, `/healthz` included. So:

- a request's head must arrive within `header_timeout_s` of the connection opening, or of
  its first byte on a kept-alive connection (aiohttp has no such timer: `GuardedHandler`);
- a request's body within `body_timeout_s` of the handler starting to read it (`read_body`,
  408);
- a kept-alive connection with no request in progress is closed after
  `keepalive_timeout_s` (aiohttp's own `keepalive_timeout`);
- at most `max_connections` are open at once (`ConnectionGate`): at the cap a new
  connection closes the connection idle the longest (no request in progress, so nothing
  is lost: HTTP clients reopen a closed kept-alive connection), and where every open
  connection is busy (WebSockets, downloads) the new one is answered 503
  `too_many_connections` and closed. The default cap stays below the descriptor limit,
  which is raised to its hard limit at start (`raise_descriptor_limit`);
- asyncio's "socket.accept() out of system resource" (a traceback per failed accept: up to
  the listen backlog per attempt, and its retries multiply, so thousands a second) is
  logged once per `LOG_INTERVAL_S` with a count (`throttle_accept_errors`).

`GuardedHandler` subclasses aiohttp's `RequestHandler` and reads two of its private members
(`_handle_request`, the per-request hook, and `_loop`/`_kwargs` of `web.Server`);
tests/api/test_api_connections.py holds each behaviour to the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import ClientError, web
from aiohttp.web_protocol import RequestHandler

from service.api.errors import ApiError, BodyCutOff, BodyTooLarge
from service.api.keys import SETTINGS
from service.config import DEFAULT_MAX_CONNECTIONS

log = structlog.get_logger(__name__)

# Descriptors kept for everything but client connections: MongoDB's pool (PyMongo's
# maxPoolSize is 100) and monitors, GridFS, log and static files.
RESERVED_FDS = 160
# Refusals, evictions and accept failures are logged at most this often, with a count.
LOG_INTERVAL_S = 10.0
# A refused connection reads (and drops) what the client still sends for this long, so the
# client reads the 503 instead of a reset; at most MAX_LINGERING of them at once.
REFUSAL_LINGER_S = 1.0
MAX_LINGERING = 64
ACCEPT_ERROR = "socket.accept() out of system resource"


class Throttle:
    """Something worth saying once per interval, however often it happens: `hit()` gives
    the count to log (the first hit, then once per interval), else None."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: float | None = None
        self._count = 0

    def hit(self) -> int | None:
        self._count += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            return None
        count, self._count, self._last = self._count, 0, now
        return count


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("descriptor limit not raised", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("descriptor limit raised", soft=hard, was=soft, hard=hard)
        return hard
    log.info("descriptor limit", soft=soft, hard=hard)
    return soft


def connection_cap(configured: int | None, fd_limit: int) -> int:
    """The cap on open connections: the configured one, or the default lowered to what the
    descriptor limit leaves after RESERVED_FDS. A configured cap above that is used as
    given (the operator may know better), with a warning."""
    room = max(fd_limit - RESERVED_FDS, fd_limit // 4)
    if configured is None:
        return min(DEFAULT_MAX_CONNECTIONS, room)
    if configured > room:
        log.warning(
            "GATEQUEUE_MAX_CONNECTIONS leaves too few descriptors: past about "
            f"{room} connections accepts may fail (out of descriptors) instead of a 503",
            max_connections=configured,
            fd_limit=fd_limit,
        )
    return configured


def _refusal(limit: int) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"the server has {limit} connections open, its limit; retry shortly",
            }
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """The open connections of one server, oldest first, and the cap on them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[GuardedHandler, None] = {}
        self.lingering = 0
        self.refused = 0
        self.evicted = 0
        self._refusals = Throttle()
        self._evictions = Throttle()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, handler: GuardedHandler) -> bool:
        """Whether `handler` may serve; at the cap the longest-idle connection makes room."""
        if len(self._open) >= self.limit:
            idle = [h for h in self._open if not h.busy]
            if not idle:
                self.refused += 1
                if (count := self._refusals.hit()) is not None:
                    log.warning(
                        "connections refused: every connection is busy",
                        max_connections=self.limit, refused=count,
                    )  # fmt: skip
                return False
            victim = min(idle, key=lambda h: h.last_active)
            self._open.pop(victim, None)
            victim.force_close()
            self.evicted += 1
            if (count := self._evictions.hit()) is not None:
                log.info(
                    "idle connections closed to make room",
                    max_connections=self.limit, closed=count,
                )  # fmt: skip
        self._open[handler] = None
        return True

    def release(self, handler: GuardedHandler) -> None:
        self._open.pop(handler, None)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the head timer, the cap, and a refusal."""

    def __init__(
        self, manager: web.Server, *, gate: ConnectionGate, header_timeout_s: float, **kw: Any
    ) -> None:
        super().__init__(manager, **kw)
        self._gate = gate
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused_transport: asyncio.Transport | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self.busy = False  # a request is being handled (WebSockets: while open)
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._gate.admit(self):
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503, then read and drop what the client sends until it closes (or a second
        passes), so it sees the answer and not a reset; closed at once where many linger."""
        self._refused_transport = transport
        transport.write(_refusal(self._gate.limit))
        if self._gate.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        self._gate.lingering += 1
        transport.write_eof()
        self._linger_timer = self._loop.call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused_transport is not None:
            return
        self.last_active = time.monotonic()
        if not self.busy and self._head_timer is None and data:
            self._arm_head_timer()  # the first byte of a kept-alive connection's next request
        super().data_received(data)

    def eof_received(self) -> None:
        if self._refused_transport is not None:
            self._refused_transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused_transport is not None:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._gate.lingering -= 1
                self._linger_timer = None
            return
        self._gate.release(self)
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.busy:
            self.force_close()

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        self._cancel_head_timer()
        self.busy = True
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self.busy = False
            self.last_active = time.monotonic()


class GuardedServer(web.Server):
    """aiohttp's low-level server, making `GuardedHandler`s (its `__call__` would make a
    plain `RequestHandler`, and fall back to aiohttp's defaults on unknown options)."""

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `GuardedHandler`s; `gate` and
    `header_timeout_s` go to each, the other keywords to aiohttp's handler as usual."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Log asyncio's failed accepts once per LOG_INTERVAL_S with a count (asyncio logs a
    traceback for each: thousands a second); the undo. The first is logged at once; later
    ones are counted and logged with the next failure after the interval."""
    previous = loop.get_exception_handler()
    throttle = Throttle()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_ERROR:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if (count := throttle.hit()) is not None:
            log.error(
                "accept failed: out of descriptors; new connections wait in the listen "
                "backlog (logged once per interval)",
                error=str(context.get("exception")),
                failures=count,
                interval_s=throttle.interval_s,
            )

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)


async def read_body(request: web.Request) -> bytes:
    """The whole body (aiohttp answers 413 past `client_max_size`), within the body
    timeout: a client that trickles it is answered 408, and its connection is closed once
    aiohttp's lingering read of the rest (`lingering_time`, at most the body timeout) ends."""
    timeout_s = request.app[SETTINGS].body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s",
        ) from None


async def stream_body(
    request: web.Request,
    write: Callable[[bytes], Awaitable[Any]],
    limit: int,
    chunk: int = 1 << 20,
) -> int:
    """Hand the body to `write` chunk by chunk (never whole in memory, past the app's
    `client_max_size`, which only `read()` applies); its length. Each chunk must arrive
    within the body timeout of the one before: an upload of gigabytes takes as long as it
    needs, a stalled one is answered 408."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(declared)
    timeout_s = request.app[SETTINGS].body_timeout_s
    total = 0
    try:
        while True:
            async with asyncio.timeout(timeout_s):
                data = await request.content.read(chunk)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise BodyTooLarge(total)
            await write(data)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"no part of the request body came for {timeout_s:g} s"
        ) from None
    except (ConnectionError, ClientError) as exc:
        raise BodyCutOff(str(exc) or type(exc).__name__) from None
    if declared is not None and total != declared:
        raise BodyCutOff(f"{total} of {declared} bytes")
    return total
