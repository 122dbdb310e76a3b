"""The job store against a real MongoDB protocol peer: claims, transitions, leases, logs."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from job_helpers import insert_job
from pymongo import AsyncMongoClient

from service.jobs.record import WorkerRef
from service.jobs.status import Status
from service.mongo.connect import connect
from service.store import Store
from service.store.jobs import CancelOutcome

HP = {"gateOptimizer": "softmax", "gates": 100, "epochs": 1}
W1 = WorkerRef(id="w1", host="host-a", gpu="0")
W2 = WorkerRef(id="w2", host="host-b", gpu="1")


async def test_insert_and_get(store: Store) -> None:
    job, created = await insert_job(store, HP, name="first")
    assert created
    got = await store.jobs.get(str(job.id))
    assert got is not None
    assert got.status == "Pending"
    assert got.version == 0
    assert got.attempt == 0
    assert got.hyperparameters == HP
    assert got.createdAt.tzinfo is not None
    assert await store.jobs.get("not-an-id") is None
    assert await store.jobs.get("0" * 24) is None


async def test_list_newest_first_with_cursor(store: Store) -> None:
    ids = [(await insert_job(store, HP))[0].id for _ in range(7)]
    page1 = await store.jobs.list(limit=3)
    assert [j.id for j in page1] == ids[::-1][:3]
    page2 = await store.jobs.list(limit=3, after=page1[-1].id)
    assert [j.id for j in page2] == ids[::-1][3:6]
    page3 = await store.jobs.list(limit=3, after=str(page2[-1].id))
    assert [j.id for j in page3] == ids[:1]
    await store.jobs.claim(await store.jobs.get(ids[0]), W1, 30)
    running = await store.jobs.list(status="Running")
    assert [j.id for j in running] == [ids[0]]


async def test_idempotent_insert_race(store: Store) -> None:
    results = await asyncio.gather(
        *(insert_job(store, HP, idempotency_key="key-1", body_hash="h") for _ in range(10))
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await store.jobs.collection.count_documents({}) == 1


async def test_claim_race_8_claimers_200_jobs(mongo_uri: str, store: Store) -> None:
    for _ in range(200):
        await insert_job(store, HP)
    claims: Counter[object] = Counter()
    clients: list[AsyncMongoClient] = [connect(mongo_uri) for _ in range(8)]

    async def claimer(i: int) -> int:
        own = Store(clients[i], store.db.name)
        worker = WorkerRef(id=f"w{i}", host="host", gpu=str(i))
        won = 0
        while True:
            pending = await own.jobs.pending(limit=20)
            if not pending:
                return won
            random.shuffle(pending)
            for job in pending:
                if await own.jobs.claim(job, worker, 30) is not None:
                    claims[job.id] += 1
                    won += 1

    try:
        wins = await asyncio.gather(*(claimer(i) for i in range(8)))
    finally:
        for c in clients:
            await c.close()
    assert sum(wins) == 200
    assert len(claims) == 200
    assert set(claims.values()) == {1}
    assert await store.jobs.collection.count_documents({"status": "Pending"}) == 0
    assert (
        await store.jobs.collection.count_documents(
            {"status": "Running", "version": 1, "attempt": 1}
        )
        == 200
    )


async def test_every_transition_is_compare_and_set(store: Store) -> None:
    job, _ = await insert_job(store, HP)
    stale = job.model_copy()

    claimed = await store.jobs.claim(job, W1, 30)
    assert claimed is not None
    assert claimed.version == 1 and claimed.attemptId is not None
    assert claimed.worker == W1
    # A second claim with the version it read loses.
    assert await store.jobs.claim(stale, W2, 30) is None

    renewed = await store.jobs.renew_lease(claimed, 30)
    assert renewed is not None
    assert renewed.version == 2
    # The attempt's own writes are conditioned on its attempt id, not on the version it saw
    # last: a renewal resent after a lost reply renews again instead of "losing the race".
    again = await store.jobs.renew_lease(claimed, 30)
    assert again is not None and again.version == 3

    # The lease expires and another attempt claims the job: every write of the first
    # attempt loses and changes nothing.
    await store.jobs.expire_leases(ahead_s=31)
    requeued = await store.jobs.get(job.id)
    assert requeued is not None and requeued.status == "Pending"
    second = await store.jobs.claim(requeued, W2, 30)
    assert second is not None and second.attemptId != claimed.attemptId
    assert await store.jobs.renew_lease(claimed, 30) is None
    assert await store.jobs.finish(claimed, Status.SUCCEEDED, exit_code=0) is None
    assert await store.jobs.release(claimed, "shutdown") is None
    assert not await store.jobs.set_latest_metrics(claimed, {"epoch": 1})
    current = await store.jobs.get(job.id)
    assert current is not None
    assert (current.status, current.version, current.worker) == ("Running", second.version, W2)
    assert current.latestMetrics is None

    done = await store.jobs.finish(second, Status.SUCCEEDED, exit_code=0)
    assert done is not None
    assert done.status == "Succeeded"
    assert done.version == second.version + 1
    assert done.finishedAt is not None
    # A finish resent after a lost reply is recognised as the attempt's own.
    assert await store.jobs.finish(second, Status.SUCCEEDED, exit_code=0) == done
    # Nothing moves a finished job.
    assert await store.jobs.finish(done, Status.FAILED, exit_code=1) is None
    assert await store.jobs.renew_lease(done, 30) is None
    assert await store.jobs.release(done, "x") is None


async def test_release_requeues_without_spending_an_attempt(store: Store) -> None:
    job, _ = await insert_job(store, HP)
    claimed = await store.jobs.claim(job, W1, 30)
    assert claimed is not None
    released = await store.jobs.release(claimed, "worker shutting down")
    assert released is not None
    assert released.status == "Pending"
    assert released.worker is None
    assert released.attempt == 0
    assert await store.jobs.claim(released, W2, 30) is not None


async def test_cancel_in_each_state(store: Store) -> None:
    pending, _ = await insert_job(store, HP)
    result = await store.jobs.request_cancel(str(pending.id))
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.job is not None
    assert result.job.status == "Cancelled"
    # A worker that read the job while Pending cannot claim it any more.
    assert await store.jobs.claim(pending, W1, 30) is None

    running, _ = await insert_job(store, HP)
    claimed = await store.jobs.claim(running, W1, 30)
    assert claimed is not None
    result = await store.jobs.request_cancel(running.id)
    assert result.outcome is CancelOutcome.REQUESTED
    assert result.job is not None
    assert result.job.cancelRequested is True
    assert result.job.status == "Running"
    # The flag does not bump the version: the owner's lease renewal still succeeds.
    assert await store.jobs.renew_lease(claimed, 30) is not None
    again = await store.jobs.request_cancel(running.id)
    assert again.outcome is CancelOutcome.ALREADY_REQUESTED

    finished = await store.jobs.request_cancel(pending.id)
    assert finished.outcome is CancelOutcome.FINISHED
    assert (await store.jobs.request_cancel("nope")).outcome is CancelOutcome.NOT_FOUND


async def test_cancel_races_claim(store: Store) -> None:
    """Whichever wins, the job ends up either Cancelled or Running-with-cancelRequested."""
    for _ in range(20):
        job, _ = await insert_job(store, HP)
        claim, cancel = await asyncio.gather(
            store.jobs.claim(job, W1, 30), store.jobs.request_cancel(job.id)
        )
        final = await store.jobs.get(job.id)
        assert final is not None
        if claim is None:
            assert cancel.outcome is CancelOutcome.CANCELLED
            assert final.status == "Cancelled"
        else:
            assert cancel.outcome is CancelOutcome.REQUESTED
            assert final.status == "Running"
            assert final.cancelRequested is True


async def test_lease_expiry_requeues_then_fails_at_max_attempts(store: Store) -> None:
    job, _ = await insert_job(store, HP, maxAttempts=2)
    first = await store.jobs.claim(job, W1, 30)
    assert first is not None
    # Not expired yet: nothing happens.
    assert await store.jobs.expire_leases() == []
    expired = await store.jobs.expire_leases(ahead_s=31)
    assert [(e.job_id, e.action) for e in expired] == [(job.id, "requeued")]
    again = await store.jobs.get(job.id)
    assert again is not None
    assert again.status == "Pending"
    assert again.worker is None
    assert "lease expired on worker w1" in again.error
    # The old owner's renewal loses: it must stop and write nothing more.
    assert await store.jobs.renew_lease(first, 30) is None
    assert await store.jobs.set_latest_metrics(first, {"epoch": 1}) is False

    second = await store.jobs.claim(again, W2, 30)
    assert second is not None
    assert second.attempt == 2
    until = await store.jobs.seconds_to_next_expiry()  # by the server's clock
    assert until is not None and 25 < until <= 30
    expired = await store.jobs.expire_leases(ahead_s=31)
    assert [e.action for e in expired] == ["failed"]
    failed = await store.jobs.get(job.id)
    assert failed is not None
    assert failed.status == "Failed"
    assert "attempt 2 of 2" in failed.error
    assert await store.jobs.seconds_to_next_expiry() is None


async def test_concurrent_expiry_sweeps_act_once(mongo_uri: str, store: Store) -> None:
    for _ in range(20):
        job, _ = await insert_job(store, HP)
        await store.jobs.claim(job, W1, 1)
    clients = [connect(mongo_uri) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(Store(c, store.db.name).jobs.expire_leases(ahead_s=5) for c in clients)
        )
    finally:
        for c in clients:
            await c.close()
    acted = [e.job_id for r in results for e in r]
    assert len(acted) == 20
    assert len(set(acted)) == 20
    assert await store.jobs.collection.count_documents({"status": "Pending", "version": 2}) == 20


async def test_log_seq_has_no_gap_or_repeat_under_concurrent_appends(store: Store) -> None:
    job, _ = await insert_job(store, HP)
    jid = job.id
    rng = random.Random(7)

    async def writer(w: int) -> list[tuple[int, int]]:
        out = []
        for b in range(15):
            n = rng.randint(1, 9)
            seq = await store.logs.append(jid, "stdout", [f"w{w} b{b} l{i}" for i in range(n)])
            out.append((seq, n))
        return out

    written = [x for r in await asyncio.gather(*(writer(w) for w in range(8))) for x in r]
    batches = await store.logs.collection.find({"jobId": jid}).sort("seq", 1).to_list(None)
    expect = 0
    for batch in batches:
        assert batch["seq"] == expect
        expect += len(batch["lines"])
    assert expect == sum(n for _, n in written)
    assert sorted(written) == [(b["seq"], len(b["lines"])) for b in batches]
    assert await store.logs.next_seq(jid) == expect


async def test_read_logs_from_mid_batch_and_limit(store: Store) -> None:
    job, _ = await insert_job(store, HP)
    jid = job.id
    seq = 0
    for _ in range(4):
        lines = [f"line {seq + i}" for i in range(5)]
        assert await store.logs.append(jid, "stdout", lines, expected_seq=seq) == seq
        seq += 5
    got = await store.logs.read(jid, from_seq=7, limit=6)
    flat = [line for batch in got for line in batch["lines"]]
    assert flat == [f"line {i}" for i in range(7, 13)]
    assert got[0]["seq"] == 7
    assert got[1]["seq"] == 10
    assert await store.logs.read(jid, from_seq=20) == []


async def test_metrics_one_document_per_epoch(store: Store) -> None:
    job, _ = await insert_job(store, HP)
    jid = job.id
    await store.metrics.write(jid, 1, 2, {"train_loss": 0.5})
    await store.metrics.write(jid, 1, 2, {"train_loss": 0.4})  # a retried write
    await store.metrics.write(jid, 2, 2, {"train_loss": 0.3, "custom": 7})
    rows = await store.metrics.list(jid)
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 0.4), (2, 0.3)]
    assert rows[1]["custom"] == 7


async def test_stream_offsets_roundtrip(store: Store) -> None:
    assert await store.offsets.load("worker:jobs") is None
    await store.offsets.save("worker:jobs", {"_data": "abc"})
    assert await store.offsets.load("worker:jobs") == {"_data": "abc"}
    await store.offsets.clear("worker:jobs")
    assert await store.offsets.load("worker:jobs") is None


async def test_count_by_status(store: Store) -> None:
    a, _ = await insert_job(store, HP)
    await insert_job(store, HP)
    await store.jobs.request_cancel(a.id)
    counts = await store.jobs.count_by_status()
    assert counts["Pending"] == 1
    assert counts["Cancelled"] == 1
    assert counts["Running"] == 0


async def test_a_cancel_whose_reply_was_lost_is_retried_and_says_what_it_did(
    mongo_uri: str, db_name: str
) -> None:
    """The cancel's write is applied but its answer lost, twice (the driver's own retry too):
    request_cancel tries again (service.retry), reads the job, and reports the cancel as its
    own (CANCELLED, REQUESTED), not as someone else's (FINISHED, ALREADY_REQUESTED)."""
    from wire_proxy import WireProxy

    async with WireProxy.for_uri(mongo_uri) as proxy:
        client = connect(proxy.uri())
        try:
            store = Store(client, db_name)
            pending, _ = await insert_job(store, HP)
            job, _ = await insert_job(store, HP)
            running = await store.jobs.claim(job, W1, 30)
            assert running is not None
            for target, outcome in (
                (pending, CancelOutcome.CANCELLED), (running, CancelOutcome.REQUESTED)
            ):  # fmt: skip
                proxy.lose_reply(
                    "findAndModify", where=lambda body: body.get("findAndModify") == "jobs",
                    times=2,
                )  # fmt: skip
                result = await store.jobs.request_cancel(target.id)
                assert result.outcome is outcome
                assert result.job is not None and result.job.cancelRequested
            fates = [e.fate for e in proxy.exchanges(command="findAndModify")]
            assert fates.count("dropped") == 4
        finally:
            proxy.heal()
            await client.close()
