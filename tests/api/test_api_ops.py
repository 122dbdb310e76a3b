"""Health, readiness, Prometheus metrics, request ids, and the error shape for aiohttp's
own errors and for crashes."""

from __future__ import annotations

import asyncio
import socket
from types import ModuleType

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, error_of
from pymongo import AsyncMongoClient

from service.api import routes_health, routes_jobs
from service.api.routing import UNDOCUMENTED, Route
from service.api.ws import LIVE
from service.jobs.record import WorkerRef
from service.jobs.status import Status
from service.mongo.connect import connect
from service.store import Store


async def test_healthz(api: TestClient) -> None:
    resp = await api.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_when_mongodb_answers(api: TestClient) -> None:
    resp = await api.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready"}


async def test_readyz_503_and_healthz_200_when_mongodb_is_gone(make_api: MakeApi) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client: AsyncMongoClient = connect(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=200
    )
    try:
        api = await make_api(store=Store(client, "gone"), ready_timeout_s=0.1)
        await error_of(await api.get("/readyz"), 503, "not_ready")
        assert (await api.get("/healthz")).status == 200
        # Job routes answer 503 (retry later), not 500.
        await error_of(await api.get("/jobs"), 503, "database_unavailable")
        metrics = await api.get("/metrics")
        assert metrics.status == 200
        assert "gatequeue_store_up 0.0" in await metrics.text()
    finally:
        await client.close()


async def test_prometheus_metrics(api: TestClient) -> None:
    for _ in range(2):
        assert (await api.post("/jobs", json=SEED_BODY)).status == 201
    await api.get("/jobs/nope")
    resp = await api.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert 'gatequeue_http_requests_total{method="POST",route="/jobs",status="201"} 2.0' in text
    # Labels are route templates, not raw paths.
    assert 'route="/jobs/{id}",status="404"' in text
    assert "/jobs/nope" not in text
    assert 'gatequeue_http_request_duration_seconds_bucket{le="0.05",method="POST"' in text
    assert 'gatequeue_jobs{status="Pending"} 2.0' in text
    assert 'gatequeue_jobs{status="Running"} 0.0' in text
    assert "gatequeue_store_up 1.0" in text


async def test_two_apps_in_one_process_keep_separate_metrics(make_api: MakeApi) -> None:
    first, second = await make_api(), await make_api()
    await first.get("/healthz")
    text = await (await second.get("/metrics")).text()
    assert 'route="/healthz"' not in text


async def test_request_id_echoed_or_made(api: TestClient) -> None:
    resp = await api.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    made = await api.get("/healthz")
    assert len(made.headers["X-Request-ID"]) == 32
    # An id that could forge log lines is replaced, not echoed.
    odd = await api.get("/healthz", headers={"X-Request-ID": "a b\u00e9"})
    assert odd.headers["X-Request-ID"] != "a b\u00e9"
    # Errors carry it too.
    err = await api.get("/jobs/nope", headers={"X-Request-ID": "err-1"})
    assert err.status == 404 and err.headers["X-Request-ID"] == "err-1"


async def test_aiohttp_404_and_405_use_the_error_shape(api: TestClient) -> None:
    await error_of(await api.get("/no/such/route"), 404, "not_found")
    resp = await api.delete("/jobs")
    await error_of(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_unhandled_exception_is_500_without_internals(make_api: MakeApi) -> None:
    crash = ModuleType("crash")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail /etc/passwd")

    crash.ROUTES = (  # type: ignore[attr-defined]
        Route("GET", "/boom", boom, "boom", "Crashes", replies=(), role=None),
    )
    api = await make_api(route_modules=[routes_health, routes_jobs, crash])
    resp = await api.get("/boom", headers={"X-Request-ID": "crash-1"})
    error = await error_of(resp, 500, "internal_error")
    assert "secret" not in error["message"] and "RuntimeError" not in error["message"]
    assert "crash-1" in error["message"]


async def test_an_undocumented_status_is_noticed(make_api: MakeApi) -> None:
    teapot = ModuleType("teapot")

    async def brew(request: web.Request) -> web.Response:
        return web.Response(status=418)

    teapot.ROUTES = (  # type: ignore[attr-defined]
        Route("GET", "/brew", brew, "brew", "Brews", replies=(), role=None),
    )
    api = await make_api(route_modules=[teapot])
    assert (await api.get("/brew")).status == 418
    assert api.app[UNDOCUMENTED] == [("GET", "/brew", 418)]  # type: ignore[index]
    api.app[UNDOCUMENTED].clear()  # type: ignore[index]  (the fixture checks it is empty)


async def test_queue_metrics_exist_and_move_when_jobs_run(api: TestClient, store: Store) -> None:
    """The queue's histograms are there before anything ran; a run started and finished (as
    a worker's claim and final write make them) moves them, read off the change stream."""
    text = await (await api.get("/metrics")).text()
    assert "gatequeue_queue_wait_seconds_count 0.0" in text
    assert 'gatequeue_run_duration_seconds_count{status="Succeeded"} 0.0' in text
    assert 'gatequeue_lease_expiries_total{action="requeued"} 0.0' in text
    assert "gatequeue_runs_started_total 0.0" in text
    job = await (await api.post("/jobs", json={**SEED_BODY, "priority": 5})).json()
    text = await (await api.get("/metrics")).text()
    assert 'gatequeue_jobs_by_priority{priority="5",status="Pending"} 1.0' in text

    pending = await store.jobs.get(job["id"])
    assert pending is not None
    running = await store.jobs.claim(pending, WorkerRef(id="w1", host="h", gpu="0"), 30)
    assert running is not None
    await _scrape_until(api, "gatequeue_queue_wait_seconds_count 1.0")
    assert await store.jobs.finish(running, Status.SUCCEEDED, exit_code=0) is not None
    text = await _scrape_until(api, 'gatequeue_run_duration_seconds_count{status="Succeeded"} 1.0')
    assert "gatequeue_runs_started_total 1.0" in text
    assert 'gatequeue_jobs_by_priority{priority="5",status="Succeeded"} 1.0' in text

    # a lease that expires re-queues its job: counted once
    other = await (await api.post("/jobs", json=SEED_BODY)).json()
    claimed = await store.jobs.claim(
        await store.jobs.get(other["id"]), WorkerRef(id="w2", host="h", gpu="0"), 30
    )
    assert claimed is not None
    assert len(await store.jobs.expire_leases(ahead_s=60)) == 1
    await _scrape_until(api, 'gatequeue_lease_expiries_total{action="requeued"} 1.0')


async def _scrape_until(api: TestClient, needle: str) -> str:
    """/metrics once it shows `needle`: re-read after each job change the app's change stream
    delivers (this observer runs after the metrics' own)."""
    changed = asyncio.Event()
    api.app[LIVE].fanout.job_observers.append(lambda _change: changed.set())  # type: ignore[index]
    async with asyncio.timeout(15):
        while True:
            changed.clear()
            text = await (await api.get("/metrics")).text()
            if needle in text:
                return text
            await changed.wait()
