"""Sweeps through real workers: `maxParallel` enforced by the claim across workers, the
claim order (priority, then age) with `queuePosition` at each step, a sweep cancelled
while its jobs run, and a slot left by a worker that died between taking it and claiming.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from test_worker_faults import is_claim
from wire_proxy import WireProxy
from worker_helpers import (
    TINY_HP,
    MakeWorker,
    eventually,
    finished,
    insert,
    status_is,
    trainer,
    wait_job,
)

from service.jobs.record import JobRecord
from service.jobs.status import Status
from service.store import Store
from service.store.queue import FREE_SLOT, SWEEP_CAP
from service.sweeps.lifecycle import cancel_sweep, create_sweep
from service.sweeps.record import SweepRecord
from service.sweeps.spec import SweepRequest, plan

REPO = Path(__file__).resolve().parents[2]
GRID = {"gates": [40, 50, 60], "gateOptimizer": ["softmax", "entmax"]}


async def make_sweep(store: Store, **spec: Any) -> tuple[SweepRecord, list[JobRecord]]:
    body = {"base": TINY_HP, "grid": GRID, **spec}
    sweep = (
        await create_sweep(
            store, plan(SweepRequest.model_validate(body), max_jobs=1000), submitted_by=None
        )
    ).sweep
    jobs = await store.jobs.list(sweep_id=sweep.id, limit=500)
    return sweep, sorted(jobs, key=lambda j: j.sweepIndex or 0)


async def all_finished(store: Store, jobs: list[JobRecord], deadline_s: float) -> list[JobRecord]:
    return [await wait_job(store, j.id, finished, deadline_s=deadline_s) for j in jobs]


def never_overlapping(jobs: list[JobRecord], limit: int) -> int:
    """The most jobs Running at once, from their stored start and finish times (the server's
    clock), asserting it never exceeds `limit`."""
    events: list[tuple[datetime, int]] = []
    for job in jobs:
        assert job.startedAt is not None and job.finishedAt is not None
        events += [(job.startedAt, 1), (job.finishedAt, -1)]
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # a finish before a start
        running += step
        most = max(most, running)
    assert most <= limit, f"{most} jobs of the sweep ran at once; maxParallel is {limit}"
    return most


async def slots_given_back(store: Store, sweep: SweepRecord) -> None:
    """A run gives its slot back just after its final write (the job's event comes first)."""

    async def free() -> bool:
        return await store.sweeps.reserved(sweep.id) == 0

    await eventually(free, deadline_s=10)


def steady_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "GQ_EPOCH_S": "0.1", **extra}


async def test_max_parallel_1_over_two_workers_runs_one_at_a_time(
    store: Store, make_worker: MakeWorker
) -> None:
    sweep, jobs = await make_sweep(store, maxParallel=1)
    assert len(jobs) == 6
    for n in range(2):  # two workers, two slots each: four free slots for one allowed run
        await make_worker(
            worker_id=f"w{n}", slots=["0", "1"], trainer_cmd=trainer("steady"),
            env=steady_env(GQ_EPOCHS="2"),
        )  # fmt: skip
    done = await all_finished(store, jobs, deadline_s=60)
    assert [j.status for j in done] == [Status.SUCCEEDED] * 6
    assert never_overlapping(done, 1) == 1
    assert [j.attempt for j in done] == [1] * 6
    await slots_given_back(store, sweep)


async def test_max_parallel_2_uses_both_slots_and_never_three(
    store: Store, make_worker: MakeWorker
) -> None:
    _, jobs = await make_sweep(store, maxParallel=2)
    for n in range(2):
        await make_worker(
            worker_id=f"w{n}", slots=["0", "1"], trainer_cmd=trainer("steady"),
            env=steady_env(GQ_EPOCHS="3"),
        )  # fmt: skip
    done = await all_finished(store, jobs, deadline_s=60)
    assert never_overlapping(done, 2) == 2


async def wait_running(store: Store, job: JobRecord) -> JobRecord:
    return await wait_job(store, job.id, status_is(Status.RUNNING), deadline_s=30)


async def positions(store: Store, jobs: list[JobRecord]) -> list[int | None]:
    out = []
    for job in jobs:
        current = await store.jobs.get(job.id)
        assert current is not None
        if current.status is not Status.PENDING:
            out.append(None)
            continue
        explained = await store.queue.explain(current)
        assert explained.waitingFor == FREE_SLOT
        out.append(explained.queuePosition)
    return out


async def test_the_highest_priority_first_then_fifo_with_queue_positions(
    store: Store, make_worker: MakeWorker
) -> None:
    claimed: list[ObjectId] = []
    await make_worker(
        trainer_cmd=trainer("steady"), env=steady_env(GQ_EPOCHS="10000"),
        on_claim=lambda job: claimed.append(job.id),
    )  # fmt: skip
    blocker = await insert(store)
    await wait_running(store, blocker)  # every slot busy from here on
    a, b, c = [await insert(store, name=f"p0-{i}") for i in range(3)]
    d = await insert(store, name="p10", priority=10)
    queue = [a, b, c, d]
    assert await positions(store, queue) == [1, 2, 3, 0]

    running = blocker
    for expected, after in (
        (d, [0, 1, 2, None]),
        (a, [None, 0, 1, None]),
        (b, [None, None, 0, None]),
        (c, [None, None, None, None]),
    ):
        await store.jobs.request_cancel(running.id)
        running = await wait_running(store, expected)
        assert await positions(store, queue) == after
    assert claimed == [blocker.id, d.id, a.id, b.id, c.id]
    await store.jobs.request_cancel(c.id)


async def test_cancelling_a_sweep_ends_every_job_including_running_ones(
    store: Store, make_worker: MakeWorker
) -> None:
    sweep, jobs = await make_sweep(store, maxParallel=2)
    await make_worker(
        slots=["0", "1", "2"], trainer_cmd=trainer("steady"), env=steady_env(GQ_EPOCHS="10000")
    )
    running = [await wait_running(store, j) for j in jobs[:2]]
    third = await store.jobs.get(jobs[2].id)
    assert third is not None
    explained = await store.queue.explain(third)  # a free slot, but the sweep is at its cap
    assert explained.waitingFor == SWEEP_CAP
    result = await cancel_sweep(store, sweep.id)
    assert result is not None and result[1:] == (4, 2)
    done = await all_finished(store, jobs, deadline_s=30)
    assert [j.status for j in done] == [Status.CANCELLED] * 6
    assert all(j.startedAt is None for j in done[2:])  # never ran
    assert {j.id for j in done if j.startedAt} == {r.id for r in running}
    await slots_given_back(store, sweep)


def is_reserve(body: dict[str, Any]) -> bool:
    """The update that takes a slot of a sweep's maxParallel (SweepStore.reserve)."""
    updates = body.get("updates") or [{}]
    stage = updates[0].get("u")
    return (
        body.get("update") == "sweeps"
        and isinstance(stage, list)
        and "running" in stage[0].get("$set", {})
    )


@pytest.mark.parametrize(
    ("held_reply", "first_attempts"),
    [(is_reserve, 1), (is_claim, 2)],
    ids=["dies-after-taking-the-slot", "dies-after-claiming"],
)
async def test_a_worker_that_dies_holding_a_sweep_slot_does_not_keep_it(
    store: Store,
    make_worker: MakeWorker,
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    held_reply: Callable[[dict[str, Any]], bool],
    first_attempts: int,
) -> None:
    """The victim takes the sweep's only slot and dies (SIGKILL) while the reply of its slot
    (or of its claim, applied) is held at the wire. Either the job stays Pending with the
    slot taken, and the heir gives the slot back once it is older than the grace; or the job
    is Running under a dead attempt, and the slot comes back with its expired lease. Then
    every job runs, never two at once."""
    sweep, jobs = await make_sweep(store, maxParallel=1)
    async with WireProxy.for_uri(mongo_uri) as proxy:
        held = proxy.delay(3600, where=held_reply)
        env = {
            **os.environ, "MONGODB_URI": proxy.uri(), "GATEQUEUE_DB": db_name,
            "GATEQUEUE_DATA_DIR": str(tmp_path / "victim"), "GATEQUEUE_LOG_FORMAT": "json",
            "GATEQUEUE_LEASE_S": "2",
        }  # fmt: skip
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", "victim",
            "--trainer", " ".join(trainer("steady")), cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                await held.fired.wait()
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            await victim.wait()
    assert await store.sweeps.reserved(sweep.id) == 1  # the dead attempt's
    statuses = [j.status for j in await _current(store, jobs)]
    if held_reply is is_reserve:
        assert statuses == [Status.PENDING] * 6
        first = await _current(store, jobs[:1])
        assert (await store.queue.explain(first[0])).waitingFor == SWEEP_CAP
    else:
        assert statuses.count(Status.RUNNING) == 1 and statuses.count(Status.PENDING) == 5

    await make_worker(
        worker_id="heir", trainer_cmd=trainer("steady"), env=steady_env(GQ_EPOCHS="1"),
        slot_grace_s=1.0, lease_s=2.0,
    )  # fmt: skip
    done = await all_finished(store, jobs, deadline_s=60)
    assert [j.status for j in done] == [Status.SUCCEEDED] * 6
    assert sorted(j.attempt for j in done) == [1] * 5 + [first_attempts]
    never_overlapping(done, 1)
    await slots_given_back(store, sweep)


async def _current(store: Store, jobs: list[JobRecord]) -> list[JobRecord]:
    out = []
    for job in jobs:
        current = await store.jobs.get(job.id)
        assert current is not None
        out.append(current)
    return out
