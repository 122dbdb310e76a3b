"""A successful run's output directory, uploaded to GridFS and linked from its job."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path

from bson import ObjectId
from pymongo.errors import PyMongoError

from service.jobs.record import Artifact
from service.retry import RECONNECT, retry
from service.store.files import ARTIFACTS_BUCKET, FileStore


class OutputUpload:
    """Every regular file under `output_dir`, sorted by name, each under an id chosen before
    its first try (docs/reliability.md, "Saving the network").

    GridFS filenames are `<job id>/<relative path>`, so `fs.files` lists a job's files by
    prefix; `metadata.jobId` is there for exact queries.
    """

    def __init__(self, files: FileStore, job_id: ObjectId, attempt: int, output_dir: Path):
        self._files = files
        self._job_id = job_id
        self._attempt = attempt
        self._output_dir = output_dir
        self._planned: list[tuple[Path, ObjectId]] | None = None

    async def run(self, deadline: Callable[[], float] | None = None) -> list[Artifact]:
        """Upload every file, each retried while `deadline()` (the lease's end) is ahead: an
        outage shorter than the lease costs nothing. A try starts by deleting what an earlier
        one left under the file's id, so the file is replaced, never duplicated. Raises the
        last error otherwise (OSError: the local file could not be read), having deleted what
        it could: `discard()` finishes that once MongoDB is back. No deadline: one try."""
        if self._planned is None:
            paths = await asyncio.to_thread(_list_files, self._output_dir)
            self._planned = [(path, ObjectId()) for path in paths]
        out: list[Artifact] = []
        try:
            for path, file_id in self._planned:
                name = path.relative_to(self._output_dir).as_posix()
                upload = functools.partial(
                    self._files.upload,
                    ARTIFACTS_BUCKET,
                    path,
                    f"{self._job_id}/{name}",
                    {"jobId": self._job_id, "attempt": self._attempt, "name": path.name},
                    file_id=file_id,
                )
                _, length = await retry(
                    upload,
                    deadline=deadline,
                    attempts=1 if deadline is None else None,
                    operation="artifact_upload",
                )
                out.append(
                    Artifact(name=name, fileId=file_id, length=length, bucket=ARTIFACTS_BUCKET)
                )
        except BaseException:
            await delete_artifacts(self._files, out)
            raise
        return out

    async def discard(self, within_s: float) -> bool:
        """Delete everything this upload may have written (files whole or half written), trying
        for up to `within_s` while MongoDB is unreachable; False if that was not enough (the
        chunks stay behind: docs/reliability.md says how to find them)."""
        deadline = time.monotonic() + within_s

        async def discard_all() -> None:
            for _, file_id in self._planned or []:
                await self._files.discard(ARTIFACTS_BUCKET, file_id)

        try:
            await retry(
                discard_all, policy=RECONNECT, deadline=deadline, operation="artifact_discard"
            )
        except PyMongoError:
            return False
        return True


async def upload_outputs(
    files: FileStore, job_id: ObjectId, attempt: int, output_dir: Path
) -> list[Artifact]:
    """One try, no lease (tests and tools that store a run's files directly)."""
    return await OutputUpload(files, job_id, attempt, output_dir).run()


async def delete_artifacts(files: FileStore, artifacts: list[Artifact]) -> None:
    await files.delete(ARTIFACTS_BUCKET, (a.fileId for a in artifacts))


def _list_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
