"""Liveness, readiness, Prometheus metrics and the OpenAPI document: never behind the token,
so probes and scrapers need no secret."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from pymongo.errors import PyMongoError

from service.api.errors import error_response, json_response
from service.api.keys import METRICS, OPENAPI_BODY, READY_TIMEOUT_S, STORE
from service.api.routing import Reply, Route
from service.api.schemas import Health

log = structlog.get_logger(__name__)


async def healthz(request: web.Request) -> web.Response:
    """Only says the event loop turns; a database outage must not get the pod restarted."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    timeout = request.app[READY_TIMEOUT_S]
    try:
        await asyncio.wait_for(request.app[STORE].ping(), timeout)
    except (TimeoutError, PyMongoError) as exc:
        log.warning("not ready", error=repr(exc))
        return error_response(
            503, "not_ready", f"MongoDB did not answer a ping within {timeout:g} s"
        )
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    app_metrics = request.app[METRICS]
    try:
        counts = await asyncio.wait_for(
            request.app[STORE].jobs.count_by_status_and_priority(), request.app[READY_TIMEOUT_S]
        )
    except (TimeoutError, PyMongoError) as exc:
        log.warning("metrics: cannot count jobs", error=repr(exc))
        counts = None
    app_metrics.set_queue(counts)
    # Prometheus' text format, declared as the classic 0.0.4 version every scraper reads.
    return web.Response(
        body=app_metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


HEALTH = Health

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "healthz", "Liveness: the process answers",
          role=None, replies=(Reply(200, "Alive.", HEALTH),)),
    Route("GET", "/readyz", readyz, "readyz", "Readiness: MongoDB answers a ping within 2 s",
          role=None,
          replies=(Reply(200, "Ready.", HEALTH),
                   Reply(503, "MongoDB did not answer (code `not_ready`).", "Error"))),
    Route("GET", "/metrics", metrics, "metrics", "Prometheus metrics", role=None,
          replies=(Reply(200, "Prometheus text exposition format.", None, "text/plain"),)),
    Route("GET", "/openapi.json", openapi, "openapi", "This document", role=None,
          replies=(Reply(200, "OpenAPI 3.1 document."),)),
)  # fmt: skip
