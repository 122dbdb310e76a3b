"""A run's checkpoints: uploaded to GridFS as the trainer writes them, and downloaded to resume
a re-queued job (docs/design.md, "Checkpoints"; the trainer's side is trainer/checkpoint.py).

The trainer announces each checkpoint with a stdout line (trainer/protocol.py's
`Checkpoint`). The uploader stores it in the `checkpoints` bucket and makes it the job's
latest, conditioned on the attempt id (a stale attempt cannot replace the checkpoint of the
attempt that holds the job now: its file is deleted instead); the job keeps the last two and
the files of older ones are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
from pymongo.errors import PyMongoError

from service.jobs.record import Checkpoint, utcnow
from service.retry import retry
from service.store import Store
from service.store.files import CHECKPOINTS_BUCKET
from service.worker.lease import Lease
from trainer.protocol import Checkpoint as CheckpointLine

log = structlog.get_logger(__name__)


class CheckpointUploader:
    """Uploads in the order written, one at a time, for as long as the lease holds."""

    def __init__(self, store: Store, lease: Lease, attempt_id: str) -> None:
        self._store = store
        self._lease = lease
        self._attempt_id = attempt_id
        self._queue: asyncio.Queue[CheckpointLine | None] = asyncio.Queue()
        self.uploaded: list[Checkpoint] = []
        self.refused = False  # the attempt does not hold the job: nothing more is uploaded
        self._task = asyncio.create_task(self._run(), name=f"checkpoints-{lease.job.id}")

    def offer(self, line: CheckpointLine) -> None:
        self._queue.put_nowait(line)

    async def close(self, timeout_s: float) -> None:
        """Finish what is queued (within `timeout_s`), then stop."""
        self._queue.put_nowait(None)
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            log.warning("checkpoint uploads cut short", job_id=str(self._lease.job.id))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while (line := await self._queue.get()) is not None:
            if self.refused or self._lease.lost:
                continue
            try:
                await self._upload(line)
            except (OSError, PyMongoError) as exc:
                # The next checkpoint will come; a run is not failed for a missed one.
                log.warning("checkpoint not stored", job_id=str(self._lease.job.id),
                            epoch=line.epoch, error=str(exc))  # fmt: skip

    async def _upload(self, line: CheckpointLine) -> None:
        job = self._lease.job
        deadline = self._lease.deadline
        file_id, length = await retry(
            lambda: self._store.files.upload(
                CHECKPOINTS_BUCKET,
                line.path,
                f"{job.id}/{self._attempt_id}/epoch-{line.epoch}-step-{line.step}.pt",
                {"jobId": job.id, "attemptId": self._attempt_id, "epoch": line.epoch,
                 "step": line.step},
            ),
            deadline=deadline, operation="checkpoint_upload",
        )  # fmt: skip
        checkpoint = Checkpoint(
            fileId=file_id, epoch=line.epoch, step=line.step, length=length,
            attemptId=self._attempt_id, createdAt=utcnow(),
        )  # fmt: skip
        dropped = await retry(
            lambda: self._store.jobs.add_checkpoint(self._lease.job, checkpoint),
            deadline=self._lease.deadline,
            operation="checkpoint_record",
        )
        if dropped is None:
            self.refused = True
            await self._store.files.delete(CHECKPOINTS_BUCKET, [file_id])
            log.warning("checkpoint refused: the attempt does not hold the job",
                        job_id=str(job.id))  # fmt: skip
            return
        self.uploaded.append(checkpoint)
        await self._store.files.delete(CHECKPOINTS_BUCKET, [c.fileId for c in dropped])
        log.info("checkpoint stored", job_id=str(job.id), epoch=line.epoch, step=line.step,
                 bytes=length)  # fmt: skip


async def download(store: Store, checkpoint: Checkpoint, directory: Path) -> Path:
    """The checkpoint's file in `directory`; raises OSError or PyMongoError if it cannot be
    had whole (deleted, truncated chunks)."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    path = directory / f"resume-epoch-{checkpoint.epoch}-step-{checkpoint.step}.pt"
    await store.files.download(CHECKPOINTS_BUCKET, checkpoint.fileId, path)
    return path


def describe(checkpoint: Checkpoint) -> str:
    where = f"epoch {checkpoint.epoch}"
    if checkpoint.step:
        where += f" step {checkpoint.step}"
    return f"{where} (checkpoint of attempt {checkpoint.attemptId[:8]})"
