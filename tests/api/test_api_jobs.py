"""GET /jobs (filters, cursor pages), GET /jobs/{id}, cancel in every state, logs, metrics."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, error_of
from bson import ObjectId

from service.api.schemas import Job, JobList, Logs, Metrics
from service.jobs.record import WorkerRef
from service.jobs.status import Status
from service.store import Store

WORKER = WorkerRef(id="w-test", host="host-test", gpu="0")


async def _submit(api: TestClient, **changes: object) -> dict:
    resp = await api.post("/jobs", json={**SEED_BODY, **changes})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _running(api: TestClient, store: Store) -> dict:
    job = await _submit(api)
    doc = await store.jobs.get(job["id"])
    assert doc is not None
    claimed = await store.jobs.claim(doc, WORKER, 30)
    assert claimed is not None
    return claimed


async def test_list_newest_first_with_cursor_pages(api: TestClient) -> None:
    ids = [(await _submit(api, seed=i))["id"] for i in range(5)]
    seen: list[str] = []
    url = "/jobs?limit=2"
    pages = 0
    while True:
        resp = await api.get(url)
        assert resp.status == 200
        page = await resp.json()
        JobList.model_validate(page)
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == page["jobs"][-1]["id"]
        url = f"/jobs?limit=2&after={page['next']}"
    assert seen == ids[::-1]
    assert pages == 3  # 2 + 2 + 1, and no empty page at the end


async def test_list_exact_page_has_no_next(api: TestClient) -> None:
    for _ in range(2):
        await _submit(api)
    page = await (await api.get("/jobs?limit=2")).json()
    assert len(page["jobs"]) == 2 and page["next"] is None
    empty = await (await api.get("/jobs")).json()
    assert len(empty["jobs"]) == 2


async def test_list_status_filter(api: TestClient, store: Store) -> None:
    pending = await _submit(api)
    running = await _running(api, store)
    resp = await api.get("/jobs?status=Running")
    assert [j["id"] for j in (await resp.json())["jobs"]] == [str(running.id)]
    resp = await api.get("/jobs?status=Pending")
    assert [j["id"] for j in (await resp.json())["jobs"]] == [pending["id"]]
    resp = await api.get("/jobs?status=Failed")
    assert (await resp.json()) == {"jobs": [], "next": None}


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("status=pending", {"status"}),
        ("status=", {"status"}),
        ("limit=0", {"limit"}),
        ("limit=201", {"limit"}),
        ("limit=-1", {"limit"}),
        ("limit=ten", {"limit"}),
        ("limit=1.5", {"limit"}),
        ("after=xyz", {"after"}),
        ("after=" + "g" * 24, {"after"}),
        ("status=Nope&limit=0&after=1", {"status", "limit", "after"}),
    ],
)
async def test_list_bad_query_is_422(api: TestClient, query: str, fields: set[str]) -> None:
    error = await error_of(await api.get(f"/jobs?{query}"), 422, "validation_error")
    assert {f["field"] for f in error["fields"]} == fields


@pytest.mark.parametrize("job_id", [str(ObjectId()), "nope", "0" * 23, "Z" * 24, "%20"])
async def test_unknown_or_malformed_id_is_404(api: TestClient, job_id: str) -> None:
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("GET", f"/jobs/{job_id}/logs"),
        ("GET", f"/jobs/{job_id}/metrics"),
    ]:
        resp = await api.request(method, path, json={} if method == "POST" else None)
        await error_of(resp, 404, "job_not_found")


async def test_get_job_shows_worker_and_times(api: TestClient, store: Store) -> None:
    running = await _running(api, store)
    resp = await api.get(f"/jobs/{running.id}")
    job = await resp.json()
    Job.model_validate(job)
    assert job["status"] == "Running"
    assert job["worker"] == {"id": "w-test", "host": "host-test", "gpu": "0"}
    assert job["startedAt"].endswith("Z") and job["leaseExpiresAt"].endswith("Z")
    assert job["attempt"] == 1 and job["version"] == 1


async def test_cancel_pending_is_200_cancelled(api: TestClient, store: Store) -> None:
    job = await _submit(api)
    resp = await api.post(f"/jobs/{job['id']}/cancel", json={})
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "Cancelled" and body["finishedAt"] is not None
    stored = await store.jobs.get(job["id"])
    assert stored is not None and stored.status == "Cancelled"
    # Cancelled is final: cancelling again is a conflict.
    await error_of(await api.post(f"/jobs/{job['id']}/cancel", json={}), 409, "job_finished")


async def test_cancel_running_is_202_cancel_requested(api: TestClient, store: Store) -> None:
    running = await _running(api, store)
    resp = await api.post(f"/jobs/{running.id}/cancel", json={})
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "Running" and body["cancelRequested"] is True
    # Asking again while the worker has not stopped yet: still accepted, nothing changes.
    again = await api.post(f"/jobs/{running.id}/cancel", json={})
    assert again.status == 202
    assert (await again.json())["cancelRequested"] is True


@pytest.mark.parametrize("final", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
async def test_cancel_finished_is_409(api: TestClient, store: Store, final: Status) -> None:
    running = await _running(api, store)
    assert await store.jobs.finish(running, final, exit_code=0) is not None
    error = await error_of(
        await api.post(f"/jobs/{running.id}/cancel", json={}), 409, "job_finished"
    )
    assert final.value in error["message"]
    stored = await store.jobs.get(running.id)
    assert stored is not None and stored.status == final.value


async def test_logs_pages_by_seq(api: TestClient, store: Store) -> None:
    running = await _running(api, store)
    oid = running.id
    await store.logs.append(oid, "stdout", ["l0", "l1", "l2"], expected_seq=0)
    await store.logs.append(oid, "stderr", ["l3", "l4"], expected_seq=3)

    resp = await api.get(f"/jobs/{oid}/logs")
    body = await resp.json()
    Logs.model_validate(body)
    assert body["jobId"] == str(oid) and body["from"] == 0 and body["next"] == 5
    assert [(b["seq"], b["stream"], b["lines"]) for b in body["batches"]] == [
        (0, "stdout", ["l0", "l1", "l2"]),
        (3, "stderr", ["l3", "l4"]),
    ]
    assert all(b["ts"].endswith("Z") for b in body["batches"])

    # From the middle of a batch, two lines at a time, until nothing is left.
    lines: list[str] = []
    start = 1
    while True:
        page = await (await api.get(f"/jobs/{oid}/logs?from={start}&limit=2")).json()
        if not page["batches"]:
            assert page["next"] == start
            break
        lines += [line for b in page["batches"] for line in b["lines"]]
        assert page["next"] > start
        start = page["next"]
    assert lines == ["l1", "l2", "l3", "l4"]


@pytest.mark.parametrize("query", ["from=-1", "from=x", "limit=0", "limit=10001"])
async def test_logs_bad_query_is_422(api: TestClient, query: str) -> None:
    job = await _submit(api)
    await error_of(await api.get(f"/jobs/{job['id']}/logs?{query}"), 422, "validation_error")


async def test_metrics_per_epoch(api: TestClient, store: Store) -> None:
    running = await _running(api, store)
    oid = running.id
    empty = await (await api.get(f"/jobs/{oid}/metrics")).json()
    assert empty == {"jobId": str(oid), "metrics": []}
    await store.metrics.write(oid, 2, 5, {"train_loss": 0.3, "test_acc": 0.9})
    await store.metrics.write(oid, 1, 5, {"train_loss": 0.5, "test_acc": 0.8})
    body = await (await api.get(f"/jobs/{oid}/metrics")).json()
    Metrics.model_validate(body)
    assert [m["epoch"] for m in body["metrics"]] == [1, 2]
    first = body["metrics"][0]
    assert first["epochs"] == 5 and first["train_loss"] == 0.5 and first["ts"].endswith("Z")
    assert "jobId" not in first and "_id" not in first
