"""The job store against a real MongoDB protocol peer: claims, transitions, leases, logs."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

from pymongo import AsyncMongoClient

from service.jobs.status import Status
from service.mongo.connect import connect
from service.store import CancelOutcome, Store, WorkerInfo, utcnow

HP = {"gateOptimizer": "softmax", "gates": 100, "epochs": 1}
W1 = WorkerInfo("w1", "host-a", "0")
W2 = WorkerInfo("w2", "host-b", "1")


async def test_insert_and_get(store: Store) -> None:
    job, created = await store.insert_job(HP, name="first")
    assert created
    got = await store.get_job(str(job["_id"]))
    assert got is not None
    assert got["status"] == "Pending"
    assert got["version"] == 0
    assert got["attempt"] == 0
    assert got["hyperparameters"] == HP
    assert got["createdAt"].tzinfo is not None
    assert await store.get_job("not-an-id") is None
    assert await store.get_job("0" * 24) is None


async def test_list_newest_first_with_cursor(store: Store) -> None:
    ids = [(await store.insert_job(HP))[0]["_id"] for _ in range(7)]
    page1 = await store.list_jobs(limit=3)
    assert [j["_id"] for j in page1] == ids[::-1][:3]
    page2 = await store.list_jobs(limit=3, after=page1[-1]["_id"])
    assert [j["_id"] for j in page2] == ids[::-1][3:6]
    page3 = await store.list_jobs(limit=3, after=str(page2[-1]["_id"]))
    assert [j["_id"] for j in page3] == ids[:1]
    await store.claim(await store.get_job(ids[0]), W1, 30)
    running = await store.list_jobs(status="Running")
    assert [j["_id"] for j in running] == [ids[0]]


async def test_idempotent_insert_race(store: Store) -> None:
    results = await asyncio.gather(
        *(store.insert_job(HP, idempotency_key="key-1", body_hash="h") for _ in range(10))
    )
    assert len({job["_id"] for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await store.jobs.count_documents({}) == 1


async def test_claim_race_8_claimers_200_jobs(mongo_uri: str, store: Store) -> None:
    for _ in range(200):
        await store.insert_job(HP)
    claims: Counter[object] = Counter()
    clients: list[AsyncMongoClient] = [connect(mongo_uri) for _ in range(8)]

    async def claimer(i: int) -> int:
        own = Store(clients[i], store.db.name)
        worker = WorkerInfo(f"w{i}", "host", str(i))
        won = 0
        while True:
            pending = await own.pending_jobs(limit=20)
            if not pending:
                return won
            random.shuffle(pending)
            for job in pending:
                if await own.claim(job, worker, 30) is not None:
                    claims[job["_id"]] += 1
                    won += 1

    try:
        wins = await asyncio.gather(*(claimer(i) for i in range(8)))
    finally:
        for c in clients:
            await c.close()
    assert sum(wins) == 200
    assert len(claims) == 200
    assert set(claims.values()) == {1}
    assert await store.jobs.count_documents({"status": "Pending"}) == 0
    assert (
        await store.jobs.count_documents({"status": "Running", "version": 1, "attempt": 1}) == 200
    )


async def test_every_transition_is_compare_and_set(store: Store) -> None:
    job, _ = await store.insert_job(HP)
    stale = dict(job)

    claimed = await store.claim(job, W1, 30)
    assert claimed is not None
    assert claimed["version"] == 1
    assert claimed["worker"] == {"id": "w1", "host": "host-a", "gpu": "0"}
    # A second claim with the version it read loses.
    assert await store.claim(stale, W2, 30) is None

    renewed = await store.renew_lease(claimed, 30)
    assert renewed is not None
    assert renewed["version"] == 2
    # Renewing with the old version (someone else moved the job) loses.
    assert await store.renew_lease(claimed, 30) is None
    # finish and release with a stale version lose too, and change nothing.
    assert await store.finish(claimed, Status.SUCCEEDED, exit_code=0) is None
    assert await store.release(claimed, "shutdown") is None
    current = await store.get_job(job["_id"])
    assert current is not None
    assert current["status"] == "Running"
    assert current["version"] == 2

    done = await store.finish(renewed, Status.SUCCEEDED, exit_code=0)
    assert done is not None
    assert done["status"] == "Succeeded"
    assert done["version"] == 3
    assert done["finishedAt"] is not None
    # Nothing moves a finished job.
    assert await store.finish(done, Status.FAILED, exit_code=1) is None
    assert await store.renew_lease(done, 30) is None
    assert await store.release(done, "x") is None


async def test_release_requeues_without_spending_an_attempt(store: Store) -> None:
    job, _ = await store.insert_job(HP)
    claimed = await store.claim(job, W1, 30)
    assert claimed is not None
    released = await store.release(claimed, "worker shutting down")
    assert released is not None
    assert released["status"] == "Pending"
    assert released["worker"] is None
    assert released["attempt"] == 0
    assert await store.claim(released, W2, 30) is not None


async def test_cancel_in_each_state(store: Store) -> None:
    pending, _ = await store.insert_job(HP)
    result = await store.request_cancel(str(pending["_id"]))
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.job is not None
    assert result.job["status"] == "Cancelled"
    # A worker that read the job while Pending cannot claim it any more.
    assert await store.claim(pending, W1, 30) is None

    running, _ = await store.insert_job(HP)
    claimed = await store.claim(running, W1, 30)
    assert claimed is not None
    result = await store.request_cancel(running["_id"])
    assert result.outcome is CancelOutcome.REQUESTED
    assert result.job is not None
    assert result.job["cancelRequested"] is True
    assert result.job["status"] == "Running"
    # The flag does not bump the version: the owner's lease renewal still succeeds.
    assert await store.renew_lease(claimed, 30) is not None
    again = await store.request_cancel(running["_id"])
    assert again.outcome is CancelOutcome.ALREADY_REQUESTED

    finished = await store.request_cancel(pending["_id"])
    assert finished.outcome is CancelOutcome.FINISHED
    assert (await store.request_cancel("nope")).outcome is CancelOutcome.NOT_FOUND


async def test_cancel_races_claim(store: Store) -> None:
    """Whichever wins, the job ends up either Cancelled or Running-with-cancelRequested."""
    for _ in range(20):
        job, _ = await store.insert_job(HP)
        claim, cancel = await asyncio.gather(
            store.claim(job, W1, 30), store.request_cancel(job["_id"])
        )
        final = await store.get_job(job["_id"])
        assert final is not None
        if claim is None:
            assert cancel.outcome is CancelOutcome.CANCELLED
            assert final["status"] == "Cancelled"
        else:
            assert cancel.outcome is CancelOutcome.REQUESTED
            assert final["status"] == "Running"
            assert final["cancelRequested"] is True


async def test_lease_expiry_requeues_then_fails_at_max_attempts(store: Store) -> None:
    job, _ = await store.insert_job(HP, max_attempts=2)
    first = await store.claim(job, W1, 30)
    assert first is not None
    # Not expired yet: nothing happens.
    assert await store.expire_leases() == []
    expired = await store.expire_leases(now=utcnow() + timedelta(seconds=31))
    assert [(e.job_id, e.action) for e in expired] == [(job["_id"], "requeued")]
    again = await store.get_job(job["_id"])
    assert again is not None
    assert again["status"] == "Pending"
    assert again["worker"] is None
    assert "lease expired on worker w1" in again["error"]
    # The old owner's renewal loses: it must stop and write nothing more.
    assert await store.renew_lease(first, 30) is None
    assert await store.set_latest_metrics(first, {"epoch": 1}) is False

    second = await store.claim(again, W2, 30)
    assert second is not None
    assert second["attempt"] == 2
    assert await store.next_lease_expiry() == second["leaseExpiresAt"]
    expired = await store.expire_leases(now=utcnow() + timedelta(seconds=31))
    assert [e.action for e in expired] == ["failed"]
    failed = await store.get_job(job["_id"])
    assert failed is not None
    assert failed["status"] == "Failed"
    assert "attempt 2 of 2" in failed["error"]
    assert await store.next_lease_expiry() is None


async def test_concurrent_expiry_sweeps_act_once(mongo_uri: str, store: Store) -> None:
    for _ in range(20):
        job, _ = await store.insert_job(HP)
        await store.claim(job, W1, 1)
    later = utcnow() + timedelta(seconds=5)
    clients = [connect(mongo_uri) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(Store(c, store.db.name).expire_leases(now=later) for c in clients)
        )
    finally:
        for c in clients:
            await c.close()
    acted = [e.job_id for r in results for e in r]
    assert len(acted) == 20
    assert len(set(acted)) == 20
    assert await store.jobs.count_documents({"status": "Pending", "version": 2}) == 20


async def test_log_seq_has_no_gap_or_repeat_under_concurrent_appends(store: Store) -> None:
    job, _ = await store.insert_job(HP)
    jid = job["_id"]
    rng = random.Random(7)

    async def writer(w: int) -> list[tuple[int, int]]:
        out = []
        for b in range(15):
            n = rng.randint(1, 9)
            seq = await store.append_logs(jid, "stdout", [f"w{w} b{b} l{i}" for i in range(n)])
            out.append((seq, n))
        return out

    written = [x for r in await asyncio.gather(*(writer(w) for w in range(8))) for x in r]
    batches = await store.job_logs.find({"jobId": jid}).sort("seq", 1).to_list(None)
    expect = 0
    for batch in batches:
        assert batch["seq"] == expect
        expect += len(batch["lines"])
    assert expect == sum(n for _, n in written)
    assert sorted(written) == [(b["seq"], len(b["lines"])) for b in batches]
    assert await store.next_log_seq(jid) == expect


async def test_read_logs_from_mid_batch_and_limit(store: Store) -> None:
    job, _ = await store.insert_job(HP)
    jid = job["_id"]
    seq = 0
    for _ in range(4):
        lines = [f"line {seq + i}" for i in range(5)]
        assert await store.append_logs(jid, "stdout", lines, expected_seq=seq) == seq
        seq += 5
    got = await store.read_logs(jid, from_seq=7, limit=6)
    flat = [line for batch in got for line in batch["lines"]]
    assert flat == [f"line {i}" for i in range(7, 13)]
    assert got[0]["seq"] == 7
    assert got[1]["seq"] == 10
    assert await store.read_logs(jid, from_seq=20) == []


async def test_metrics_one_document_per_epoch(store: Store) -> None:
    job, _ = await store.insert_job(HP)
    jid = job["_id"]
    await store.write_metrics(jid, 1, 2, {"train_loss": 0.5})
    await store.write_metrics(jid, 1, 2, {"train_loss": 0.4})  # a retried write
    await store.write_metrics(jid, 2, 2, {"train_loss": 0.3, "custom": 7})
    rows = await store.get_metrics(jid)
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 0.4), (2, 0.3)]
    assert rows[1]["custom"] == 7


async def test_stream_offsets_roundtrip(store: Store) -> None:
    assert await store.load_offset("worker:jobs") is None
    await store.save_offset("worker:jobs", {"_data": "abc"})
    assert await store.load_offset("worker:jobs") == {"_data": "abc"}
    await store.clear_offset("worker:jobs")
    assert await store.load_offset("worker:jobs") is None


async def test_count_by_status(store: Store) -> None:
    a, _ = await store.insert_job(HP)
    await store.insert_job(HP)
    await store.request_cancel(a["_id"])
    counts = await store.count_by_status()
    assert counts["Pending"] == 1
    assert counts["Cancelled"] == 1
    assert counts["Running"] == 0
