"""Fencing: a worker frozen (SIGSTOP) past its lease cannot keep its job training.

Its trainer hears no newer lease deadline and stops itself by the last one it heard
(trainer.supervision); the job is re-queued and claimed elsewhere; when the frozen worker
wakes up, the store refuses its stale attempt's writes. Before: the frozen worker's trainer
went on for 14 s while the job trained again elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from worker_helpers import (
    TINY_HP,
    MakeWorker,
    eventually,
    finished,
    insert,
    logged_value,
    pid_alive,
    trainer,
    wait_job,
)

from service.jobs.status import Status
from service.store import Store

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
RENEW_S = LEASE_S / 3  # the worker's default renewal interval


def _runs(ledger: Path) -> dict[str, list[tuple[float, float]]]:
    """attempt id -> [(monotonic time, fence deadline)] heartbeats of its trainer."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.setdefault(parts[1], []).append((float(parts[2]), float(parts[3])))
    return out


async def test_a_frozen_workers_trainer_stops_by_its_deadline_and_its_writes_are_refused(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    env = {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LEASE_S": str(LEASE_S),
        "GATEQUEUE_DATA_DIR": str(tmp_path / "frozen"),
        "GATEQUEUE_LOG_FORMAT": "json",
        "GQ_TEST_LEDGER": str(ledger),
        "GQ_EPOCH_S": "0.2",
    }
    log_path = tmp_path / "frozen.log"
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o644)
    frozen = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", "frozen",
        "--trainer", shlex.join(trainer("steady")),
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.close(out)
    try:
        job = await insert(store, {**TINY_HP, "epochs": 200})
        running = await wait_job(store, job.id, lambda j: j.status is Status.RUNNING, deadline_s=60)
        first_attempt = running.attemptId
        assert running.worker is not None and running.worker.id == "frozen"
        trainer_pid = await logged_value(store, job.id, "pid")
        # Forked by the worker's warm trainer (on by default), not started by the worker.
        assert psutil.Process(trainer_pid).ppid() not in (frozen.pid, 1)
        await eventually(lambda: asyncio.to_thread(_heard_a_renewal, ledger, first_attempt))
        frozen.send_signal(signal.SIGSTOP)

        # The trainer stops itself while its worker is still frozen.
        await eventually(lambda: _gone(trainer_pid), deadline_s=LEASE_S + 10)
        # Another worker re-queues the job when its lease passes and runs it.
        survivor_env = {**os.environ, "GQ_TEST_LEDGER": str(ledger), "GQ_EPOCHS": "3"}
        await make_worker(
            worker_id="survivor", trainer_cmd=trainer("steady"), lease_s=LEASE_S, env=survivor_env
        )
        done = await wait_job(store, job.id, finished, deadline_s=60)
        assert done.status == "Succeeded" and done.attempt == 2
        assert done.worker is not None and done.worker.id == "survivor"
        stale_batches = await _batches_of(store, job.id, first_attempt)

        # The frozen worker wakes up: nothing it still holds reaches the job.
        frozen.send_signal(signal.SIGCONT)
        await eventually(lambda: asyncio.to_thread(_said, log_path, "job lost"), deadline_s=30)
    finally:
        if frozen.returncode is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.terminate()
            await frozen.wait()

    runs = _runs(ledger)
    assert set(runs) == {first_attempt, done.attemptId}
    first, second = runs[first_attempt], runs[done.attemptId]  # type: ignore[index]
    ended, last_deadline = first[-1]
    # Within one renewal interval of the last deadline it heard (heartbeats are 50 ms apart).
    assert ended - last_deadline < RENEW_S, (ended, last_deadline)
    # No two attempts trained at the same time.
    assert ended < second[0][0]
    assert await _batches_of(store, job.id, first_attempt) == stale_batches
    final = await store.jobs.get(job.id)
    assert final is not None and final.status == "Succeeded" and final.attemptId == done.attemptId


def _heard_a_renewal(ledger: Path, attempt: str | None) -> bool:
    """The trainer's deadline moved at least once: the worker's renewals reach it."""
    if not ledger.exists():
        return False
    deadlines = {d for _, d in _runs(ledger).get(attempt or "", [])}
    return len(deadlines) >= 2


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def _said(path: Path, needle: str) -> bool:
    return needle in path.read_text()


async def _batches_of(store: Store, job_id: object, attempt_id: str | None) -> int:
    return await store.logs.collection.count_documents({"jobId": job_id, "attemptId": attempt_id})
