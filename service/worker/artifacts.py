"""A successful run's output directory, uploaded to GridFS and linked from its job.

Files are read in a thread, chunk by chunk, so a large network never blocks the event loop
(GridFS's own `upload_from_stream` would read the file synchronously).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import structlog
from bson import ObjectId
from gridfs import AsyncGridFSBucket
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from service.store import ARTIFACTS_BUCKET as BUCKET
from service.store import artifacts_bucket

log = structlog.get_logger(__name__)

_CHUNK = 4 << 20


async def upload_outputs(
    db: AsyncDatabase, job_id: ObjectId, attempt: int, output_dir: Path
) -> list[dict[str, Any]]:
    """Every regular file under `output_dir` -> `[{name, fileId, length}]`, sorted by name.

    GridFS filenames are `<job id>/<relative path>`, so `fs.files` lists a job's files by
    prefix; `metadata.jobId` is there for exact queries.
    """
    files = await asyncio.to_thread(_list_files, output_dir)
    grid = artifacts_bucket(db)
    out: list[dict[str, Any]] = []
    try:
        for path in files:
            name = path.relative_to(output_dir).as_posix()
            file_id, length = await _upload_one(grid, path, f"{job_id}/{name}", job_id, attempt)
            out.append({"name": name, "fileId": file_id, "length": length, "bucket": BUCKET})
    except BaseException:
        await delete_artifacts(db, out)
        raise
    return out


async def delete_artifacts(db: AsyncDatabase, artifacts: list[dict[str, Any]]) -> None:
    """Best effort: used when the job could not be marked finished (lost race), so its
    files would be orphans."""
    grid = artifacts_bucket(db)
    for art in artifacts:
        with contextlib.suppress(PyMongoError):
            await grid.delete(art["fileId"])


def _list_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


async def _upload_one(
    grid: AsyncGridFSBucket, path: Path, filename: str, job_id: ObjectId, attempt: int
) -> tuple[ObjectId, int]:
    stream = grid.open_upload_stream(
        filename, metadata={"jobId": job_id, "attempt": attempt, "name": path.name}
    )
    length = 0
    try:
        with open(path, "rb") as fh:  # noqa: ASYNC230 -- reads below happen in a thread
            while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                await stream.write(chunk)
                length += len(chunk)
        await stream.close()
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.abort()
        raise
    return stream._id, length
