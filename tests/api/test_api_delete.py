"""`DELETE /jobs/{id}`, `DELETE /sweeps/{id}` and retention (service.jobs.retention): every
collection and bucket of the database is counted, so nothing of a removed job survives
anywhere, and nothing of another job goes with it."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, bearer, error_of
from bson import ObjectId
from job_helpers import insert_job

from service import tokens
from service.api.keys import RETENTION
from service.jobs.record import WorkerRef
from service.jobs.retention import Retention
from service.jobs.status import Status
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET, BUCKETS, CHECKPOINTS_BUCKET
from service.tokens import Role

HP: dict[str, Any] = {**SEED_BODY, "epochs": 2}


async def _stuff(store: Store, job_id: ObjectId, tmp_path: Path) -> dict[str, ObjectId]:
    """What a run stores: two log batches, two epochs of metrics, a checkpoint and a network
    (each file over one chunk, so a bucket's chunks are counted too)."""
    await store.logs.append(job_id, "stdout", ["epoch 1"])
    await store.logs.append(job_id, "stdout", ["epoch 2"])
    for epoch in (1, 2):
        await store.metrics.write(job_id, epoch, 2, {"test_acc_discrete": 0.5})
    data = tmp_path / f"{job_id}.bin"
    data.write_bytes(b"x" * (300 << 10))  # two chunks of GridFS's 255 KiB
    out = {}
    for bucket in (CHECKPOINTS_BUCKET, ARTIFACTS_BUCKET):
        out[bucket], _ = await store.files.upload(
            bucket, data, f"{job_id}/{bucket}", {"jobId": job_id}
        )
    return out


async def _references(store: Store, job_id: ObjectId) -> dict[str, int]:
    """Documents of every collection of the database that belong to `job_id`: the job, its
    rows (`jobId`), its files (`metadata.jobId`) and those files' chunks."""
    found: dict[str, int] = {}
    file_ids: list[Any] = []
    for bucket in BUCKETS:
        file_ids += await store.db[f"{bucket}.files"].distinct("_id", {"metadata.jobId": job_id})
    for name in await store.db.list_collection_names():
        query = {"$or": [{"_id": job_id}, {"jobId": job_id}, {"metadata.jobId": job_id},
                         {"files_id": {"$in": file_ids}}]}  # fmt: skip
        n = await store.db[name].count_documents(query)
        if n:
            found[name] = n
    return found


async def _set(store: Store, job_id: ObjectId, status: Status, days_ago: float) -> None:
    finished = datetime.now(UTC) - timedelta(days=days_ago)
    await store.jobs.collection.update_one(
        {"_id": job_id}, {"$set": {"status": status.value, "finishedAt": finished}}
    )


async def test_delete_removes_the_job_and_everything_it_stored(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    doomed = (await (await api.post("/jobs", json=HP, headers=JSON)).json())["id"]
    kept = (await (await api.post("/jobs", json=HP, headers=JSON)).json())["id"]
    for job_id in (doomed, kept):
        await _stuff(store, ObjectId(job_id), tmp_path)
        await _set(store, ObjectId(job_id), Status.SUCCEEDED, 0)
    before = await _references(store, ObjectId(kept))
    assert await _references(store, ObjectId(doomed)) == before  # the same, job for job
    assert set(before) >= {
        "jobs",
        "job_logs",
        "job_metrics",
        "artifacts.files",
        "artifacts.chunks",
        "checkpoints.files",
        "checkpoints.chunks",
    }

    resp = await api.delete(f"/jobs/{doomed}")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body == {"id": doomed, "removed": {"jobs": 1, "logBatches": 2, "metrics": 2,
                                              "files": 2}}  # fmt: skip
    assert await _references(store, ObjectId(doomed)) == {}
    assert await _references(store, ObjectId(kept)) == before
    await error_of(await api.delete(f"/jobs/{doomed}"), 404, "job_not_found")
    await error_of(await api.get(f"/jobs/{doomed}"), 404)


async def test_a_running_job_is_cancelled_first_and_its_worker_refused(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    job, _ = await insert_job(store, HP)
    claimed = await store.jobs.claim(job, WorkerRef(id="w1", host="h", gpu="0"), 30)
    assert claimed is not None and claimed.status is Status.RUNNING
    await _stuff(store, job.id, tmp_path)
    resp = await api.delete(f"/jobs/{job.id}")
    assert resp.status == 200, await resp.text()
    assert await _references(store, job.id) == {}
    # the worker's next renewal and its final write find nothing of theirs: it stops
    assert await store.jobs.renew_lease(claimed, 30) is None
    assert await store.jobs.finish(claimed, Status.SUCCEEDED, exit_code=0) is None
    assert await store.jobs.get(job.id) is None


async def test_deleting_another_users_job_needs_admin(make_api: MakeApi, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    secrets = {name: tokens.add(path, name, role) for name, role in
               {"alice": Role.SUBMIT, "bob": Role.SUBMIT, "reader": Role.READ,
                "boss": Role.ADMIN}.items()}  # fmt: skip
    api = await make_api(tokens_file=path)
    made = await api.post("/jobs", json=HP, headers={**JSON, **bearer(secrets["alice"])})
    job_id = (await made.json())["id"]
    error = await error_of(
        await api.delete(f"/jobs/{job_id}", headers=bearer(secrets["bob"])), 403, "forbidden"
    )
    assert "deleting" in error["message"] and "alice" in error["message"]
    await error_of(await api.delete(f"/jobs/{job_id}", headers=bearer(secrets["reader"])), 403)
    assert (await api.delete(f"/jobs/{job_id}", headers=bearer(secrets["boss"]))).status == 200


async def test_delete_sweep_removes_every_run(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    body = {"name": "s", "base": HP, "grid": {"gates": [1000, 2000, 4000]}}
    sweep = await (await api.post("/sweeps", json=body, headers=JSON)).json()
    runs = [ObjectId(j["id"]) for j in sweep["jobs"]]
    await store.jobs.collection.update_one(
        {"_id": runs[0]}, {"$set": {"status": Status.RUNNING.value, "attemptId": "a1"}}
    )
    for run in runs[:2]:
        await _stuff(store, run, tmp_path)
    other = (await (await api.post("/jobs", json=HP, headers=JSON)).json())["id"]
    await _stuff(store, ObjectId(other), tmp_path)
    before = await _references(store, ObjectId(other))

    resp = await api.delete(f"/sweeps/{sweep['id']}")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["removed"] == {"jobs": 3, "logBatches": 4, "metrics": 4,
                                              "files": 4}  # fmt: skip
    for run in runs:
        assert await _references(store, run) == {}
    assert await store.sweeps.get(ObjectId(sweep["id"])) is None
    assert await _references(store, ObjectId(other)) == before
    await error_of(await api.delete(f"/sweeps/{sweep['id']}"), 404)


async def test_retention_under_two_api_replicas_removes_each_item_once(
    make_api: MakeApi, store: Store, tmp_path: Path
) -> None:
    """Failed and Cancelled jobs past 30 days go whole; logs of finished jobs past 90 days go;
    a Succeeded run keeps its record, metrics and network; recent jobs keep everything."""
    ages = {
        "old failed": (Status.FAILED, 40),
        "old cancelled": (Status.CANCELLED, 31),
        "ancient succeeded": (Status.SUCCEEDED, 100),
        "recent failed": (Status.FAILED, 2),
        "old succeeded": (Status.SUCCEEDED, 40),
    }
    jobs: dict[str, ObjectId] = {}
    for name, (status, days) in ages.items():
        job, _ = await insert_job(store, HP)
        await _stuff(store, job.id, tmp_path)
        await _set(store, job.id, status, days)
        jobs[name] = job.id
    running, _ = await insert_job(store, HP)  # never finished: never touched
    await _stuff(store, running.id, tmp_path)
    before = {name: await _references(store, oid) for name, oid in jobs.items()}

    apis = [await make_api(), await make_api()]
    replicas: list[Retention] = [a.app[RETENTION] for a in apis]  # type: ignore[index]
    assert replicas[0].holder != replicas[1].holder
    for replica in replicas:
        replica.batch = 1  # a batch per job: the two replicas interleave if they can
    results = await asyncio.gather(*(r.run_once() for r in replicas))
    assert sorted(r is None for r in results) == [False, True]  # one pass, the other waited
    done = [r for r in results if r is not None]
    total = (
        sum((r.to_json()["jobs"] for r in done), 0),
        sum((r.to_json()["logBatches"] for r in done), 0),
        sum((r.to_json()["files"] for r in done), 0),
    )
    # 2 jobs whole (2 log batches, 2 files each) and the ancient Succeeded run's 2 batches
    assert total == (2, 6, 4)

    removed_jobs = 0.0  # /metrics: each replica counts what it removed; summed, each once
    for a in apis:
        text = await (await a.get("/metrics")).text()
        found = re.search(r'gatequeue_retention_removed_total\{what="jobs"\} ([0-9.]+)', text)
        removed_jobs += float(found[1]) if found else 0.0
    assert removed_jobs == 2.0

    assert await _references(store, jobs["old failed"]) == {}
    assert await _references(store, jobs["old cancelled"]) == {}
    ancient = await _references(store, jobs["ancient succeeded"])
    assert ancient == {k: v for k, v in before["ancient succeeded"].items() if k != "job_logs"}
    net = await store.jobs.get(jobs["ancient succeeded"])
    assert net is not None and net.status is Status.SUCCEEDED
    for name in ("recent failed", "old succeeded"):
        assert await _references(store, jobs[name]) == before[name], name
    assert (await _references(store, running.id))["job_logs"] == 2

    again = [await r.run_once() for r in replicas]
    assert all(r is not None and not r.anything for r in again)


async def test_the_retention_lease_is_held_by_one_replica_at_a_time(store: Store) -> None:
    leases = store.leases
    assert await leases.acquire("retention", "a", 60)
    assert not await leases.acquire("retention", "b", 60)
    assert await leases.acquire("retention", "a", 60)  # its holder renews it
    await leases.release("retention", "b")  # not b's to release
    assert await leases.holder("retention") == "a"
    await leases.release("retention", "a")
    assert await leases.acquire("retention", "b", 60)
    # a holder that died: its lease passes once expired (by the server's clock)
    await store.db["leases"].update_one(
        {"_id": "retention"}, {"$set": {"expiresAt": datetime(2000, 1, 1, tzinfo=UTC)}}
    )
    assert await leases.acquire("retention", "a", 60)
