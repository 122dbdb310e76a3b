"""Several workers, crashes, cuts and restarts: no job is missed, none runs twice.

Recovery times are printed (run with `-s` to see them); they are measurements, not
assertions. The numbers of record come from `bench/`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest
from tcpproxy import TcpProxy
from worker_helpers import (
    MakeWorker,
    eventually,
    finished,
    insert,
    log_text,
    logged_value,
    pid_alive,
    status_is,
    stopped_with_token,
    trainer,
    wait_job,
)

from service.config import Settings
from service.jobs.record import JobRecord
from service.jobs.status import Status
from service.store import Store
from service.worker import run_worker
from service.worker.dispatch import offset_name

REPO = Path(__file__).resolve().parents[2]


def report(what: str, seconds: float) -> None:
    print(f"\n[recovery] {what}: {seconds * 1000:.0f} ms", flush=True)


class Claims:
    """`on_claim` hook: when each job was claimed, awaitable per job."""

    def __init__(self) -> None:
        self.at: dict[object, float] = {}
        self._events: dict[object, asyncio.Event] = {}

    def __call__(self, job: JobRecord) -> None:
        self.at[job.id] = time.perf_counter()
        self._event(job.id).set()

    def _event(self, job_id: object) -> asyncio.Event:
        return self._events.setdefault(job_id, asyncio.Event())

    async def wait(self, job_id: object, deadline_s: float = 30.0) -> float:
        async with asyncio.timeout(deadline_s):
            await self._event(job_id).wait()
        return self.at[job_id]


async def test_two_workers_30_jobs_each_ran_exactly_once(
    store: Store, make_worker: MakeWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("GQ_TEST_LEDGER", str(ledger))
    for _ in range(2):
        await make_worker(trainer_cmd=trainer("epochs"), slots=["0", "1"])
    jobs = [await insert(store) for _ in range(30)]
    done = [await wait_job(store, j.id, finished, deadline_s=120) for j in jobs]
    assert {d.status for d in done} == {"Succeeded"}
    assert {d.attempt for d in done} == {1}
    runs = [line.split() for line in ledger.read_text().splitlines()]
    assert Counter(r[0] for r in runs) == Counter(str(j.id) for j in jobs)  # once each
    by_id = {str(d.id): d for d in done}
    for job_id, _attempt, visible, _pid in runs:  # the run saw its slot's GPU only
        assert visible == by_id[job_id].worker.gpu
    per_worker = Counter(d.worker.id for d in done)
    assert set(per_worker) == {"w1", "w2"}, per_worker
    assert await store.jobs.collection.count_documents({"status": {"$ne": "Succeeded"}}) == 0


async def test_sigkill_of_a_worker_requeues_its_job_for_another(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    lease_s = 2.0
    env = {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LEASE_S": str(lease_s),
        "GATEQUEUE_DATA_DIR": str(tmp_path / "victim"),
        "GATEQUEUE_LOG_FORMAT": "json",
    }
    out = os.open(tmp_path / "victim.log", os.O_WRONLY | os.O_CREAT, 0o644)
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", "victim",
        "--trainer", shlex.join(trainer("sleeper")),
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.close(out)
    try:
        job = await insert(store)
        running = await wait_job(store, job.id, status_is(Status.RUNNING), deadline_s=60)
        assert running.worker.id == "victim"
        trainer_pid = await logged_value(store, job.id, "pgid")
        child_pid = await logged_value(store, job.id, "child")
        # The survivor joins now, so the victim surely had the job first.
        await make_worker(worker_id="survivor", trainer_cmd=trainer("epochs"), lease_s=lease_s)
        killed_at = time.perf_counter()
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        await wait_job(store, job.id, lambda j: j.attempt == 2 or j.status == "Pending")
        requeued_at = time.perf_counter()
        done = await wait_job(store, job.id, finished)
        done_at = time.perf_counter()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    report("SIGKILL -> re-queued (lease 2 s)", requeued_at - killed_at)
    report("SIGKILL -> finished by the other worker", done_at - killed_at)
    assert done.status == "Succeeded"
    assert done.attempt == 2
    assert done.worker.id == "survivor"
    lines = await log_text(store, job.id)
    assert "attempt 1 on worker victim gpu cpu" in lines
    assert "attempt 2 on worker survivor gpu cpu" in lines
    assert any("lease expired on worker victim; re-queued" in line for line in lines)
    # The victim's trainer died with it (parent-death signal); its own child is an orphan
    # of the trainer, not of the worker, and is cleaned up here.
    await eventually(lambda: _not(pid_alive(trainer_pid)))
    if pid_alive(child_pid):
        os.kill(child_pid, signal.SIGKILL)


async def _not(value: bool) -> bool:
    return not value


async def _idle(worker: object) -> bool:
    return not getattr(worker, "runs", None)


async def test_change_stream_cursor_killed_worker_resumes_and_misses_nothing(
    store: Store, make_worker: MakeWorker
) -> None:
    claims = Claims()
    worker = await make_worker(trainer_cmd=trainer("epochs"), on_claim=claims)
    before = await insert(store)  # so the worker holds a resume token when the cut comes
    await wait_job(store, before.id, status_is(Status.SUCCEEDED))
    await eventually(lambda: _idle(worker))
    cursor_id = worker.feed.cursor_id
    assert cursor_id
    reply = await store.db.command("killCursors", "jobs", cursors=[cursor_id])
    assert reply["cursorsKilled"] == [cursor_id]
    cut_at = time.perf_counter()
    # Inserted while the worker's stream is dead (the driver has not noticed yet).
    jobs = [await insert(store) for _ in range(3)]
    claimed_at = await claims.wait(jobs[0].id)
    for job in jobs:
        await wait_job(store, job.id, status_is(Status.SUCCEEDED))
    # Once idle, only the change stream can wake the worker: a claim proves it is back.
    await eventually(lambda: _idle(worker))
    probe = await insert(store)
    probe_inserted = time.perf_counter()
    probe_claimed = await claims.wait(probe.id)
    await wait_job(store, probe.id, status_is(Status.SUCCEEDED))
    report("cursor killed -> first job inserted after it claimed", claimed_at - cut_at)
    report("after the cut, insert -> claimed (idle worker)", probe_claimed - probe_inserted)
    assert worker.feed.cursor_id not in (None, cursor_id)  # a new server cursor
    assert worker.feed.resumed_from_token  # re-opened where it had left off


async def test_connections_dropped_worker_resumes_and_misses_nothing(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    up = urlparse(mongo_uri)
    proxy = await TcpProxy(up.hostname or "127.0.0.1", up.port or 27017).start()
    try:
        claims = Claims()
        worker = await make_worker(
            uri=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            trainer_cmd=trainer("epochs"),
            on_claim=claims,
        )
        before = await insert(store)
        await wait_job(store, before.id, status_is(Status.SUCCEEDED))
        await eventually(lambda: _idle(worker))
        proxy.cut(refuse=True)
        cut_at = time.perf_counter()
        jobs = [await insert(store) for _ in range(3)]  # while the worker cannot reach MongoDB
        async with asyncio.timeout(30):
            await proxy.refused.wait()  # the driver noticed and tried to reconnect
        proxy.heal()
        healed_at = time.perf_counter()
        first = min([await claims.wait(j.id) for j in jobs])
        for job in jobs:
            await wait_job(store, job.id, status_is(Status.SUCCEEDED))
        await eventually(lambda: _idle(worker))
        probe = await insert(store)
        probe_inserted = time.perf_counter()
        probe_claimed = await claims.wait(probe.id)
        await wait_job(store, probe.id, status_is(Status.SUCCEEDED))
        worker.stop()
        await worker.stopped.wait()
    finally:
        await proxy.close()
    report("connections reset -> first missed insert claimed", first - cut_at)
    report("reconnect allowed -> first missed insert claimed", first - healed_at)
    report("after the drop, insert -> claimed (idle worker)", probe_claimed - probe_inserted)


async def test_restarted_worker_resumes_from_its_token(
    store: Store, make_worker: MakeWorker
) -> None:
    missed = await stopped_with_token(store, make_worker, "steady")
    second = await make_worker(worker_id="steady", trainer_cmd=trainer("epochs"))
    assert second.feed.resumed_from_token
    assert second.feed.token_fallbacks == 0
    for job in missed:
        done = await wait_job(store, job.id, finished)
        assert done.status == "Succeeded" and done.worker.id == "steady"
    # The replayed events of the downtime arrived too (their claims simply lost to catch-up).
    await eventually(lambda: _at_least(second.feed, 3))


async def test_stopping_worker_leaves_new_events_to_its_successor(
    store: Store, make_worker: MakeWorker
) -> None:
    """An insert that reaches a worker after stop() is still delivered (the stream stays open
    until the claimer has returned) but its token is not stored: the next start replays it."""
    worker = await make_worker(worker_id="leaving", trainer_cmd=trainer("epochs"))
    done = await insert(store)
    await wait_job(store, done.id, finished)
    await eventually(lambda: _at_least(worker.feed, 1))
    await worker.feed.tokens.flush()
    before = await store.offsets.load(offset_name("leaving"))
    assert before is not None
    worker.feed.tokens.stop_recording()  # what stop() does first, without ending the stream yet
    late = await insert(store)
    await eventually(lambda: _at_least(worker.feed, 2))
    await worker.feed.tokens.flush()
    assert await store.offsets.load(offset_name("leaving")) == before
    await wait_job(store, late.id, finished)  # delivered events are still acted on


async def _at_least(feed: object, n: int) -> bool:
    return getattr(feed, "events", 0) >= n


async def test_unusable_token_falls_back_to_catch_up(store: Store, make_worker: MakeWorker) -> None:
    await store.offsets.save(offset_name("amnesiac"), {"_data": "00deadbeef"})
    waiting = await insert(store)
    worker = await make_worker(worker_id="amnesiac", trainer_cmd=trainer("epochs"))
    assert not worker.feed.resumed_from_token
    assert worker.feed.token_fallbacks == 1
    done = await wait_job(store, waiting.id, finished)
    assert done.status == "Succeeded"
    fresh = await store.offsets.load(offset_name("amnesiac"))
    assert fresh != {"_data": "00deadbeef"}


async def test_run_worker_cancellation_is_a_graceful_stop(
    store: Store, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    settings = Settings(
        mongodb_uri=mongo_uri, db_name=db_name, gpus=("cpu",), lease_s=5,
        data_dir=tmp_path / "data", heartbeat_file=tmp_path / "beat",
    )  # fmt: skip
    task = asyncio.create_task(
        run_worker(settings, trainer_cmd=trainer("sleeper"), worker_id="rw", shutdown_grace_s=0)
    )
    job = await insert(store)
    pgid = await logged_value(store, job.id, "pgid")
    assert (tmp_path / "beat").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    back = await store.jobs.get(job.id)
    assert back is not None and back.status == "Pending" and back.worker is None
    assert not pid_alive(pgid)
    assert not (tmp_path / "beat").exists()


async def test_jobs_queued_before_start_are_caught_up_oldest_first(
    store: Store, make_worker: MakeWorker
) -> None:
    jobs = [await insert(store) for _ in range(4)]  # more than the worker has slots
    claims = Claims()
    await make_worker(trainer_cmd=trainer("epochs"), on_claim=claims)
    for job in jobs:
        done = await wait_job(store, job.id, finished)
        assert done.status == "Succeeded"
    order = sorted(claims.at, key=claims.at.__getitem__)
    assert order == [j.id for j in jobs]
