"""Group commit of submissions: same documents as the store writes, one batch for many
concurrent requests, and a refused document fails only its own request."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, job_count
from job_helpers import insert_job
from pymongo.errors import WriteError

from service.api.keys import STORE
from service.jobs.record import new_job
from service.jobs.request import JobRequest
from service.mongo.connect import connect
from service.store import Store
from service.store.inserter import JobInserter

HP = JobRequest.model_validate(SEED_BODY).hyperparameters()


def doc(name: str | None, max_attempts: int) -> dict[str, object]:
    return new_job(HP, {"name": name, "maxAttempts": max_attempts}).to_doc()


async def test_batched_and_keyed_inserts_store_the_same_document(store: Store) -> None:
    batched, _ = await insert_job(store, HP, name="n", maxAttempts=4)
    keyed, _ = await insert_job(
        store, HP, name="n", maxAttempts=4, idempotency_key="k", body_hash="h"
    )
    a = await store.jobs.collection.find_one({"_id": batched.id})
    b = await store.jobs.collection.find_one({"_id": keyed.id})
    assert a is not None and b is not None
    assert set(b) - set(a) == {"idempotencyKey", "requestHash"}
    volatile = {"_id", "createdAt", "updatedAt", "idempotencyKey", "requestHash"}
    assert {k: v for k, v in a.items() if k not in volatile} == {
        k: v for k, v in b.items() if k not in volatile
    }


async def test_concurrent_submissions_share_batches(api: TestClient, store: Store) -> None:
    inserter = api.app[STORE].jobs.inserter
    before = inserter.batches
    responses = await asyncio.gather(*(api.post("/jobs", json=SEED_BODY) for _ in range(40)))
    assert [r.status for r in responses] == [201] * 40
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 40
    assert await job_count(store) == 40
    stored = {str(d["_id"]) async for d in store.jobs.collection.find({}, {"_id": 1})}
    assert stored == ids
    assert inserter.batches - before < 40


async def test_refused_document_fails_alone(store: Store) -> None:
    inserter = JobInserter(store.jobs.collection)
    taken = doc("first", 3)
    await store.jobs.collection.insert_one(dict(taken))
    clash = {**doc("clash", 3), "_id": taken["_id"]}
    fine = [doc(f"ok-{i}", 3) for i in range(5)]
    results = await asyncio.gather(
        *(inserter.insert(d) for d in [fine[0], clash, *fine[1:]]), return_exceptions=True
    )
    assert [type(r) for r in results] == [type(None), WriteError] + [type(None)] * 4
    assert isinstance(results[1], WriteError) and results[1].code == 11000
    assert await store.jobs.collection.count_documents({}) == 6
    assert inserter.batches == 1
    await inserter.close()


async def test_close_waits_for_writes_in_flight(store: Store) -> None:
    inserter = JobInserter(store.jobs.collection, max_in_flight=1)
    tasks = [asyncio.ensure_future(inserter.insert(doc(None, 3))) for _ in range(10)]
    await asyncio.sleep(0)  # let them queue
    await inserter.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert await store.jobs.collection.count_documents({}) == 10


async def test_batch_size_is_capped(store: Store) -> None:
    inserter = JobInserter(store.jobs.collection, max_batch=3, max_in_flight=1)
    docs = [doc(None, 3) for _ in range(7)]
    await asyncio.gather(*(inserter.insert(d) for d in docs))
    assert inserter.batches == 3
    assert (
        await store.jobs.collection.count_documents({"_id": {"$in": [d["_id"] for d in docs]}}) == 7
    )


@pytest.mark.parametrize("key", [None, "k-1"])
async def test_submit_when_mongodb_is_gone_is_503(make_api: MakeApi, key: str | None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = connect(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=200
    )
    try:
        api = await make_api(store=Store(client, "gone"))
        headers = {} if key is None else {"Idempotency-Key": key}
        resp = await api.post("/jobs", json=SEED_BODY, headers=headers)
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "database_unavailable"
    finally:
        await client.close()
