"""Webhooks in the API: the record of each job's and sweep's deliveries (`GET
/jobs/{id}/deliveries`, `GET /sweeps/{id}/deliveries`), and this replica's sender
(service.webhooks.dispatcher), woken by the process's jobs change stream. Listed after the
WebSocket module: its `setup` finds the fanout there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.api.errors import json_response
from service.api.keys import METRICS, SETTINGS, STORE, WEBHOOKS
from service.api.routes_jobs import ERR_404_JOB, JOB_ID, existing_job_id
from service.api.routing import Param, Reply, Route, not_found, path_id
from service.api.schemas import Deliveries
from service.api.webhooks import ALLOW
from service.api.ws import LIVE
from service.cancellation import cancel_and_wait
from service.store.deliveries import delivery_json
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.targets import AllowList

log = structlog.get_logger(__name__)


async def job_deliveries(request: web.Request) -> web.Response:
    oid = await existing_job_id(request)
    rows = await request.app[STORE].deliveries.for_subject("job", oid)
    return json_response({"id": str(oid), "deliveries": [delivery_json(r) for r in rows]})


async def sweep_deliveries(request: web.Request) -> web.Response:
    oid = path_id(request, "sweep")
    store = request.app[STORE]
    if await store.sweeps.get(oid) is None:
        raise not_found("sweep", oid)
    rows = await store.deliveries.for_subject("sweep", oid)
    return json_response({"id": str(oid), "deliveries": [delivery_json(r) for r in rows]})


SWEEP_ID = Param("id", "path", "Sweep id (24 hex digits). Anything else is answered 404.",
                 required=True)  # fmt: skip

ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/jobs/{id}/deliveries", job_deliveries, "getJobDeliveries",
        "The job's webhook deliveries", params=(JOB_ID,),
        description="One entry per (event, target): its state (`pending`, `delivered`, "
        "`failed`), tries, last answer or error. Targets show their scheme and host only.",
        replies=(Reply(200, "The deliveries, by key.", Deliveries), ERR_404_JOB),
    ),
    Route(
        "GET", "/sweeps/{id}/deliveries", sweep_deliveries, "getSweepDeliveries",
        "The sweep's webhook deliveries (its end)", params=(SWEEP_ID,),
        replies=(Reply(200, "The deliveries, by key.", Deliveries),
                 Reply(404, "No sweep with this id.", "Error")),
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    allow = AllowList.parse(settings.webhook_allow)
    app[ALLOW] = allow
    if not allow.on:
        if settings.webhooks:
            log.warning("GATEQUEUE_WEBHOOKS is set but GATEQUEUE_WEBHOOK_ALLOW is empty: "
                        "webhooks are off")  # fmt: skip
        return
    if not settings.webhook_secret:
        log.warning("GATEQUEUE_WEBHOOK_SECRET is not set: deliveries go unsigned")
    metrics = app[METRICS]
    dispatcher = Dispatcher(
        app[STORE], allow=allow, hooks=settings.webhooks, secret=settings.webhook_secret,
        base_url=settings.allowed_origins[0] if settings.allowed_origins else None,
        on_outcome=metrics.note_delivery,
    )  # fmt: skip
    app[WEBHOOKS] = dispatcher
    if LIVE in app:
        app[LIVE].fanout.job_observers.append(dispatcher.observe)
    app.cleanup_ctx.append(_dispatcher_ctx)


async def _dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[WEBHOOKS].forever(), name="webhooks")
    yield
    await cancel_and_wait(task)
