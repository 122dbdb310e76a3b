"""GridFS: the files of runs. `artifacts` holds what a successful run wrote (the trained
network); every file carries its job and attempt in `metadata`.

Local files are read in a thread, chunk by chunk, so a large network never blocks the event
loop (GridFS's own `upload_from_stream` would read the file synchronously) and never sits
whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from service.store.errors import FileGone

ARTIFACTS_BUCKET = "artifacts"
# A run's checkpoints, `metadata: {jobId, attemptId, epoch, step}`; the job keeps the last two.
CHECKPOINTS_BUCKET = "checkpoints"
BUCKETS = (ARTIFACTS_BUCKET, CHECKPOINTS_BUCKET)  # every bucket that holds a job's files
_CHUNK = 4 << 20
ORPHAN_BATCH = 500  # file ids looked up at once when looking for orphaned chunks


class FileStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        """A job's files are found by `metadata.jobId` (deletes, retention, orphans)."""
        for bucket in BUCKETS:
            await self._db[f"{bucket}.files"].create_index("metadata.jobId")

    def bucket(self, name: str) -> AsyncGridFSBucket:
        return AsyncGridFSBucket(self._db, bucket_name=name)

    async def upload(
        self,
        bucket: str,
        path: Path,
        filename: str,
        metadata: dict[str, Any],
        *,
        file_id: ObjectId | None = None,
    ) -> tuple[ObjectId, int]:
        """Store a local file; (its GridFS id, its length). Nothing is left on failure, as far
        as MongoDB can be reached to remove it.

        With `file_id`, a try that can be repeated: whatever an earlier try left under that id
        (chunks written before an outage, or a whole file whose reply was lost) is deleted
        first, so the file is replaced, never stored twice, and no chunk of it is orphaned."""
        grid = self.bucket(bucket)
        if file_id is None:
            stream = grid.open_upload_stream(filename, metadata=metadata)
        else:
            await self.discard(bucket, file_id)
            stream = grid.open_upload_stream_with_id(file_id, filename, metadata=metadata)
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

    async def open(self, bucket: str, file_id: ObjectId) -> AsyncGridOut:
        """Raises FileGone for a file no longer stored."""
        try:
            return await self.bucket(bucket).open_download_stream(file_id)
        except NoFile:
            raise FileGone(bucket, file_id) from None

    async def download(self, bucket: str, file_id: ObjectId, path: Path) -> int:
        """Save a stored file to `path` (written beside it and renamed: a partial download is
        never taken for the file); its length. Raises if it is gone or truncated."""
        grid_out = await self.open(bucket, file_id)
        part = path.with_name(path.name + ".part")
        length = 0
        try:
            with open(part, "wb") as fh:  # noqa: ASYNC230 -- writes below happen in a thread
                while chunk := await grid_out.readchunk():
                    await asyncio.to_thread(fh.write, chunk)
                    length += len(chunk)
            if length != grid_out.length:
                raise OSError(
                    f"stored file {file_id} is truncated: {length} of {grid_out.length} B"
                )
            await asyncio.to_thread(part.replace, path)
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)
        return length

    async def delete(self, bucket: str, file_ids: Iterable[ObjectId]) -> None:
        """Best effort: a file that could not be deleted is an orphan, not an error."""
        grid = self.bucket(bucket)
        for file_id in file_ids:
            with contextlib.suppress(PyMongoError):
                await grid.delete(file_id)

    async def discard(self, bucket: str, file_id: ObjectId) -> bool:
        """Delete a file, complete or not: its chunks first (a file half written has chunks
        and no `files` document), then its document; whether this call removed the document.
        Raises if MongoDB cannot be reached."""
        await self._db[f"{bucket}.chunks"].delete_many({"files_id": file_id})
        result = await self._db[f"{bucket}.files"].delete_one({"_id": file_id})
        return result.deleted_count == 1

    async def delete_for(self, bucket: str, job_ids: list[ObjectId]) -> int:
        """Every file of these jobs, chunks included; the number of files removed."""
        files = self._db[f"{bucket}.files"]
        cursor = files.find({"metadata.jobId": {"$in": job_ids}}, {"_id": 1})
        found = [doc["_id"] async for doc in cursor]
        return sum([await self.discard(bucket, file_id) for file_id in found])

    async def delete_unlisted(self, bucket: str, job_id: ObjectId, keep: Iterable[ObjectId]) -> int:
        """Delete a job's files other than `keep`: those an attempt uploaded and then died
        before the job named them. Only once the job has finished, when no attempt is
        uploading any more."""
        files = self._db[f"{bucket}.files"]
        cursor = files.find({"metadata.jobId": job_id, "_id": {"$nin": list(keep)}}, {"_id": 1})
        orphans = [doc["_id"] async for doc in cursor]
        await self.delete(bucket, orphans)
        return len(orphans)

    async def stored_before(
        self, bucket: str, before: datetime
    ) -> list[tuple[ObjectId, dict[str, Any]]]:
        """(id, metadata) of the complete files uploaded before `before`."""
        cursor = self._db[f"{bucket}.files"].find(
            {"uploadDate": {"$lt": before}}, {"_id": 1, "metadata": 1}
        )
        return [(doc["_id"], doc.get("metadata") or {}) async for doc in cursor]

    async def remove_partial(self, bucket: str, before: datetime) -> int:
        """Remove the chunks of files that never got their `files` document: an upload
        killed between its chunks and its close (a process killed, a machine lost), which
        nothing else would ever name. Only files whose id (an ObjectId, made when the upload
        opened) is older than `before`, so an upload still under way is never touched.
        The number of such files removed."""
        chunks, files = self._db[f"{bucket}.chunks"], self._db[f"{bucket}.files"]
        ids = await chunks.distinct(
            "files_id", {"files_id": {"$lt": ObjectId.from_datetime(before)}}
        )
        removed = 0
        for start in range(0, len(ids), ORPHAN_BATCH):
            batch = ids[start : start + ORPHAN_BATCH]
            present = {d["_id"] async for d in files.find({"_id": {"$in": batch}}, {"_id": 1})}
            missing = [i for i in batch if i not in present]
            if missing:
                await chunks.delete_many({"files_id": {"$in": missing}})
                removed += len(missing)
        return removed
