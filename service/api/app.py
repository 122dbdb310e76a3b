"""Build the aiohttp application and run it.

`create_app` wires everything from a `Settings` and an open `Store`; it owns neither, so
tests hand in a store on a throw-away database. Route modules are listed in
`service.api.routes`; each declares its `ROUTES` (service.api.routing: the router and the
OpenAPI document are built from them) and may have `setup(app)` for start-up and clean-up
work (`app.on_startup`, `app.cleanup_ctx`: e.g. one change stream per process fanned out to
WebSocket clients). Objects several route modules share are made here, once, under the
typed keys of `service.api.keys`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from types import ModuleType

import structlog
from aiohttp import web

from service.api import auth
from service.api.capacity import SlotCache
from service.api.connections import (
    ConnectionGate,
    GuardedRunner,
    connection_cap,
    raise_descriptor_limit,
    throttle_accept_errors,
)
from service.api.errors import MAX_BODY_BYTES, OpenApiRefused, error_middleware
from service.api.keys import (
    METRICS,
    OPENAPI_BODY,
    QUOTA,
    READY_TIMEOUT_S,
    SETTINGS,
    SLOTS,
    STORE,
)
from service.api.limits import READY_TIMEOUT_S as DEFAULT_READY_TIMEOUT_S
from service.api.middleware import add_request_id_header, request_middleware
from service.api.openapi import openapi_document
from service.api.origin import is_loopback_host
from service.api.prom import ApiMetrics
from service.api.quota import SubmissionQuota
from service.api.routes import ROUTE_MODULES
from service.api.routing import GUARD, Guard, add_routes, all_routes
from service.config import Settings
from service.mongo.connect import connect
from service.store import Store

log = structlog.get_logger(__name__)

# Seconds in-flight requests get to finish after a stop is asked for.
SHUTDOWN_TIMEOUT_S = 10.0
# Request line and each header: aiohttp answers 400 past these (docs/security.md).
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
# aiohttp reads (and drops) an unread request body for up to this long before it closes
# the connection (its default); never longer than the body timeout.
LINGERING_S = 10.0


def refuse_open(settings: Settings, host: str, *, insecure_open: bool) -> None:
    """Raise OpenApiRefused where an API without tokens would listen beyond loopback."""
    if settings.auth_configured or insecure_open or is_loopback_host(host):
        return
    raise OpenApiRefused(
        f"refusing to serve {host} without a token: anyone who can reach it could run "
        "jobs on your GPUs and read every job. Set GATEQUEUE_API_TOKEN or "
        "GATEQUEUE_TOKENS_FILE (`gatequeue token add NAME --role admin`), or pass "
        "--insecure-open if this network is yours alone."
    )


def create_app(
    settings: Settings,
    store: Store,
    *,
    route_modules: list[ModuleType] | None = None,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    insecure_open: bool = False,
) -> web.Application:
    """`insecure_open`: an API without tokens that answers any Host (`gatequeue serve
    --insecure-open` on a non-loopback address); else an open API answers loopback names
    only (service.api.origin)."""
    app = web.Application(
        # The access-log middleware is outermost, so it sees what the error middleware made
        # of failures (and its X-Request-ID lands on error responses too).
        middlewares=[request_middleware, error_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app.on_response_prepare.append(add_request_id_header)
    app[SETTINGS] = settings
    app[STORE] = store
    app[METRICS] = ApiMetrics()
    app[READY_TIMEOUT_S] = ready_timeout_s
    app[SLOTS] = SlotCache(store.workers)
    app[QUOTA] = SubmissionQuota(
        store.jobs, rate_per_min=settings.submit_rate_per_min, max_pending=settings.max_pending
    )
    app[GUARD] = Guard(
        allowed_origins=settings.allowed_origins,
        host_check=not settings.auth_configured and not insecure_open,
    )
    auth.setup(app, settings, store.sessions)
    modules = route_modules if route_modules is not None else ROUTE_MODULES
    routes = all_routes(modules)
    app[OPENAPI_BODY] = json.dumps(openapi_document(routes), separators=(",", ":")).encode()
    add_routes(app, routes)
    app.on_cleanup.append(_close_store)
    for module in modules:
        setup: Callable[[web.Application], None] | None = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
    return app


async def _close_store(app: web.Application) -> None:
    """Submissions in flight reach the database before the app is gone."""
    await app[STORE].close()


async def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    started: Callable[[str], None] | None = None,
    insecure_open: bool = False,
) -> None:
    """Connect, ensure indexes, serve until cancelled; then stop accepting, let in-flight
    requests finish (up to SHUTDOWN_TIMEOUT_S), run clean-up hooks and close the client.

    The caller turns SIGTERM/SIGINT into a cancel of this coroutine (`gatequeue serve`,
    `python -m service.api`). `started` gets the URL once the socket listens. Raises
    OpenApiRefused for an API without tokens on a non-loopback address, unless
    `insecure_open`.
    """
    uri = settings.mongodb_uri
    if not uri:
        raise ValueError("serve() needs settings.mongodb_uri")
    refuse_open(settings, host, insecure_open=insecure_open)
    # Before the MongoDB client opens its sockets (docs/security.md, "Connections").
    gate = ConnectionGate(connection_cap(settings.max_connections, raise_descriptor_limit()))
    # WebSockets are never closed to make room: half the connections stay for the rest.
    if settings.max_websockets > gate.limit // 2:
        settings = dataclasses.replace(settings, max_websockets=max(1, gate.limit // 2))
    restore_exception_handler = throttle_accept_errors(asyncio.get_running_loop())
    client = connect(uri)
    try:
        store = Store(client, settings.db_name)
        await store.ensure_indexes()
        app = create_app(settings, store, insecure_open=insecure_open)
        # aiohttp's own access log is off: ours is structlog's, with the request id.
        runner = GuardedRunner(
            app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            # Request-handler options go to the runner as keywords: a `handler_args` here
            # makes aiohttp's RequestHandler fail and fall back to its defaults, which
            # quietly turns its own access log back on (and logs a warning per connection).
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            keepalive_timeout=settings.keepalive_timeout_s,
            lingering_time=min(LINGERING_S, settings.body_timeout_s),
            gate=gate,
            header_timeout_s=settings.header_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0] if runner.addresses else (host, port)
            shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
            url = f"http://{shown}:{bound[1]}/"
            log.info(
                "api listening",
                url=url,
                db=settings.db_name,
                auth="tokens" if settings.auth_configured else "open",
                max_connections=gate.limit,
                max_websockets=settings.max_websockets,
                header_timeout_s=settings.header_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                keepalive_timeout_s=settings.keepalive_timeout_s,
            )
            if started is not None:
                started(url)
            await asyncio.Event().wait()  # until cancelled
        finally:
            log.info("api stopping")
            await runner.cleanup()
    finally:
        await client.close()
        restore_exception_handler()
