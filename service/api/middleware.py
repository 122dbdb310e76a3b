"""Request id, access log and request metrics: the outermost layer around every handler.

The request id is the client's `X-Request-ID` when it looks sane (so a proxy's or a
client's id follows the request through our logs) or a fresh one; it is echoed on every
response, errors included, and bound into structlog's context so every line a handler
logs carries it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.api.errors import CLIENT_CLOSED
from service.api.keys import METRICS, REQUEST_ID
from service.api.routing import note_status
from service.logconfig import ACCESS_LOGGER

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

access_log = structlog.get_logger(ACCESS_LOGGER)


def request_id_of(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as unique as a uuid4, a third of the cost


def route_of(request: web.Request) -> str:
    """The route template (`/jobs/{id}`), never the raw path: metric labels stay few."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: runs as headers go out, so WebSocket handshakes and streamed
    responses (prepared inside their handler) carry the id as plain responses do."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    rid = request_id_of(request)
    request[REQUEST_ID] = rid
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=rid):
        try:
            response = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client went away (or the server is stopping)
            raise
        except web.HTTPException as exc:  # only redirects get past the error middleware
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - start
            note_status(request, status)
            route = route_of(request)
            request.app[METRICS].observe(request.method, route, status, elapsed)
            access_log.info(
                "request",
                method=request.method,
                path=request.path,
                route=route,
                status=status,
                ms=round(elapsed * 1000, 2),
                remote=request.remote,
            )
