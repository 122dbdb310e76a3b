"""Durable runs: checkpoints stored with the job, resumed wherever the job is re-queued.

The stand-in trainer (trainers/steady.py) speaks the checkpoint protocol of `python -m
trainer`; tests/trainer has the trainer's own side (exact resume, atomic writes), and
test_worker_resume_real.py runs the real trainer through a worker.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bson import ObjectId
from worker_helpers import (
    TINY_HP,
    MakeWorker,
    finished,
    insert,
    log_text,
    trainer,
    wait_job,
)

from service.jobs.record import Checkpoint, WorkerRef, utcnow
from service.jobs.status import Status
from service.store import Store
from service.store.files import CHECKPOINTS_BUCKET

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 10
HP = {**TINY_HP, "epochs": EPOCHS}


def _worker_env(mongo_uri: str, db_name: str, tmp_path: Path, name: str) -> dict[str, str]:
    return {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LEASE_S": "4",
        "GATEQUEUE_DATA_DIR": str(tmp_path / name),
        "GATEQUEUE_LOG_FORMAT": "json",
        "GQ_EPOCH_S": "0.2",
    }


async def _spawn(env: dict[str, str], tmp_path: Path, name: str) -> asyncio.subprocess.Process:
    out = os.open(tmp_path / f"{name}.log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", name,
            "--trainer", shlex.join(trainer("steady")),
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(out)


def _epochs_of(lines: list[str]) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("EPOCH ")]


async def test_a_killed_workers_job_resumes_from_its_checkpoint(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    victim = await _spawn(_worker_env(mongo_uri, db_name, tmp_path, "victim"), tmp_path, "victim")
    try:
        job = await insert(store, HP, checkpointIntervalS=0.0)
        await wait_job(
            store, job.id, lambda j: j.checkpoint is not None and j.checkpoint.epoch >= 5
        )
        os.killpg(victim.pid, signal.SIGKILL)  # the worker's whole process group
        await victim.wait()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    mid = await store.jobs.get(job.id)
    assert mid is not None and mid.checkpoint is not None
    saved = mid.checkpoint
    await make_worker(worker_id="heir", trainer_cmd=trainer("steady"), lease_s=4.0)
    done = await wait_job(store, job.id, finished, deadline_s=60)
    assert done.status == "Succeeded" and done.attempt == 2
    lines = await log_text(store, job.id)
    assert (
        f"resumed from epoch {saved.epoch} (checkpoint of attempt {saved.attemptId[:8]})" in lines
    )
    # The second attempt trained only the epochs after its checkpoint ...
    after = lines[lines.index(f"resumed from epoch {saved.epoch} "
                              f"(checkpoint of attempt {saved.attemptId[:8]})"):]  # fmt: skip
    assert _epochs_of(after) == list(range(saved.epoch + 1, EPOCHS + 1))
    # ... and every epoch's metrics are stored once.
    metrics = await store.metrics.list(job.id)
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    assert done.resumedFrom is not None and done.resumedFrom.epoch == saved.epoch
    assert len(done.checkpoints) == 2  # the last two kept; older files deleted
    files = await store.db[f"{CHECKPOINTS_BUCKET}.files"].count_documents(
        {"metadata.jobId": job.id}
    )
    assert files == 2


async def test_sigterm_hands_the_job_back_and_it_resumes_without_counting_an_attempt(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    leaving = await _spawn(
        _worker_env(mongo_uri, db_name, tmp_path, "leaving"), tmp_path, "leaving"
    )
    try:
        job = await insert(store, HP, checkpointIntervalS=3600.0)  # only the stop's checkpoint
        await wait_job(store, job.id, lambda j: (j.latestMetrics or {}).get("epoch", 0) >= 3)
        leaving.send_signal(signal.SIGTERM)
        assert await leaving.wait() == 0
    finally:
        if leaving.returncode is None:
            leaving.kill()
            await leaving.wait()
    back = await store.jobs.get(job.id)
    assert back is not None and back.status == "Pending" and back.attempt == 0
    assert back.checkpoint is not None and back.checkpoint.epoch >= 3
    await make_worker(worker_id="next", trainer_cmd=trainer("steady"), lease_s=4.0)
    done = await wait_job(store, job.id, finished, deadline_s=60)
    assert done.status == "Succeeded" and done.attempt == 1
    lines = await log_text(store, job.id)
    assert any("shut down during the run; re-queued; it resumes from epoch" in ln for ln in lines)
    assert any(ln.startswith(f"resumed from epoch {back.checkpoint.epoch} ") for ln in lines)
    metrics = await store.metrics.list(job.id)
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))


async def _with_checkpoints(
    store: Store, epochs: int, files: list[tuple[int, Path | None]]
) -> tuple[ObjectId, str]:
    """A Pending job with checkpoints of an earlier attempt: (epoch, file), None = a file lost."""
    job = await insert(store, {**TINY_HP, "epochs": epochs}, checkpointIntervalS=0.0)
    claimed = await store.jobs.claim(job, WorkerRef(id="old", host="h", gpu="cpu"), 30)
    assert claimed is not None and claimed.attemptId is not None
    for epoch, path in files:
        stored = path if path is not None else _write(path, "{}")
        file_id, length = await store.files.upload(CHECKPOINTS_BUCKET, stored, stored.name, {})
        if path is None:
            await store.files.delete(CHECKPOINTS_BUCKET, [file_id])
        ckpt = Checkpoint(fileId=file_id, epoch=epoch, length=length,
                          attemptId=claimed.attemptId, createdAt=utcnow())  # fmt: skip
        assert await store.jobs.add_checkpoint(claimed, ckpt) == []
    assert await store.jobs.release(claimed, "test") is not None
    return job.id, claimed.attemptId


def _write(path: Path | None, text: str) -> Path:
    out = path or Path(tempfile.mkdtemp()) / "lost.json"
    out.write_text(text)
    return out


async def test_a_corrupt_checkpoint_falls_back_to_the_one_before_then_to_epoch_0(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    good = _write(tmp_path / "good.json", '{"format": "steady", "epoch": 2, "epochs": 4}')
    bad = _write(tmp_path / "bad.json", "not a checkpoint")
    # The newest checkpoint is garbage, the one before is good.
    corrupt, attempt = await _with_checkpoints(store, 4, [(2, good), (3, bad)])
    # The only checkpoint's file is lost.
    lost, lost_attempt = await _with_checkpoints(store, 3, [(2, None)])
    await make_worker(trainer_cmd=trainer("steady"))
    done = await wait_job(store, corrupt, finished, deadline_s=60)
    assert done.status == "Succeeded", done.error
    lines = await log_text(store, corrupt)
    assert any(
        ln.startswith(f"epoch 3 (checkpoint of attempt {attempt[:8]}) was refused by the trainer")
        and ln.endswith(f"trying epoch 2 (checkpoint of attempt {attempt[:8]})")
        for ln in lines
    ), lines
    assert f"resumed from epoch 2 (checkpoint of attempt {attempt[:8]})" in lines
    assert _epochs_of(lines) == [3, 4]

    done = await wait_job(store, lost, finished, deadline_s=60)
    assert done.status == "Succeeded"
    lines = await log_text(store, lost)
    assert any(
        ln.startswith(f"epoch 2 (checkpoint of attempt {lost_attempt[:8]}) could not be downloaded")
        and ln.endswith("starting from epoch 0")
        for ln in lines
    ), lines
    assert _epochs_of(lines) == [1, 2, 3]


async def test_a_stale_attempts_checkpoint_is_refused(store: Store, tmp_path: Path) -> None:
    job = await insert(store, HP)
    first = await store.jobs.claim(job, WorkerRef(id="a", host="h", gpu="cpu"), 30)
    assert first is not None
    await store.jobs.expire_leases(ahead_s=31)
    requeued = await store.jobs.get(job.id)
    assert requeued is not None and requeued.status is Status.PENDING
    second = await store.jobs.claim(requeued, WorkerRef(id="b", host="h", gpu="cpu"), 30)
    assert second is not None
    path = tmp_path / "c.json"
    path.write_text("{}")
    file_id, length = await store.files.upload(CHECKPOINTS_BUCKET, path, "c", {})
    mine = Checkpoint(fileId=file_id, epoch=4, length=length, attemptId=second.attemptId or "",
                      createdAt=utcnow())  # fmt: skip
    assert await store.jobs.add_checkpoint(second, mine) == []
    stale = mine.model_copy(update={"epoch": 9, "attemptId": first.attemptId})
    assert await store.jobs.add_checkpoint(first, stale) is None
    current = await store.jobs.get(job.id)
    assert current is not None and current.checkpoint == mine
