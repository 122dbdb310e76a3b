"""The `job_logs` collection: each job's log as batches of lines tiling it by `seq`.

A batch is `{jobId, seq, stream, lines, ts}`: `seq` is the index of its first line in the
job's log, 0-based, with no gap and no overlap between batches (docs/design.md, "Logs").
Reads ask for bounded batches, so a log of any length is read page by page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.jobs.record import iso, utcnow
from service.store.errors import StaleAttempt

LOG_STREAMS = ("stdout", "stderr", "system")
# Documents per reply while reading a log: a batch holds up to 500 lines of up to 1 MiB
# each (service.worker.logsink), so 16 of them stay far below a reply's 16 MiB cap at the
# common sizes and a reader's memory is bounded by this, not by the log's length.
READ_BATCH_DOCS = 16

LogBatch = dict[str, Any]
OwnerCheck = Callable[[ObjectId, str], Awaitable[bool]]


def trim_batch(batch: LogBatch, from_seq: int) -> LogBatch | None:
    """The part of a log batch at or after `from_seq`; `None` if it lies wholly before."""
    seq, lines = batch["seq"], batch["lines"]
    if seq + len(lines) <= from_seq:
        return None
    if seq >= from_seq:
        return batch
    return {**batch, "seq": from_seq, "lines": lines[from_seq - seq :]}


def batch_json(batch: LogBatch) -> dict[str, Any]:
    """A batch as the API and the WebSocket tail show it: `{seq, stream, lines, ts}`."""
    ts = batch.get("ts")
    return {
        "seq": batch["seq"],
        "stream": batch["stream"],
        "lines": list(batch["lines"]),
        "ts": iso(ts) if ts is not None else None,
    }


class LogStore:
    """`owns` tells whether an attempt still runs its job (JobStore.owns): the fence that
    keeps a stale attempt's lines out of the log of the attempt that took over."""

    def __init__(self, collection: AsyncCollection, owns: OwnerCheck) -> None:
        self.collection = collection
        self._owns = owns

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("jobId", ASCENDING), ("seq", ASCENDING)], unique=True)

    async def delete_for(self, job_ids: list[ObjectId]) -> int:
        """Every batch of these jobs (deleted jobs, or retention); the number removed."""
        return (await self.collection.delete_many({"jobId": {"$in": job_ids}})).deleted_count

    async def next_seq(self, job_id: ObjectId) -> int:
        last = await self.collection.find_one(
            {"jobId": job_id}, sort=[("seq", DESCENDING)], projection={"seq": 1, "lines": 1}
        )
        return 0 if last is None else last["seq"] + len(last["lines"])

    async def append(
        self,
        job_id: ObjectId,
        stream: str,
        lines: Sequence[str],
        *,
        expected_seq: int | None = None,
        attempt_id: str | None = None,
    ) -> int:
        """Append one batch and return the `seq` it was stored at.

        The next seq is the end of the highest batch; the unique (jobId, seq) index turns a
        concurrent append into a duplicate-key error, and the loser re-reads the end and
        tries again. So batches tile the log with no gap and no overlap, and nothing is
        reserved that a crash could leave as a hole. A single writer passes the seq it
        expects and pays no read at all. With `attempt_id` (an attempt's own lines, not a
        note about the job) the write is refused with StaleAttempt unless that attempt runs
        the job now.
        """
        if stream not in LOG_STREAMS:
            raise ValueError(f"stream must be one of {LOG_STREAMS}, not {stream!r}")
        if not lines:
            raise ValueError("a log batch needs at least one line")
        if attempt_id is not None and not await self._owns(job_id, attempt_id):
            raise StaleAttempt(f"attempt {attempt_id} no longer runs job {job_id}")
        seq = expected_seq if expected_seq is not None else await self.next_seq(job_id)
        doc: dict[str, Any] = {"jobId": job_id, "stream": stream, "lines": list(lines)}
        if attempt_id is not None:
            doc["attemptId"] = attempt_id
        while True:
            try:
                await self.collection.insert_one({**doc, "seq": seq, "ts": utcnow()})
                return seq
            except DuplicateKeyError:
                seq = await self.next_seq(job_id)

    async def batch_at(self, job_id: ObjectId, seq: int) -> LogBatch | None:
        """The batch stored at exactly `seq` (did my write land?)."""
        return await self.collection.find_one({"jobId": job_id, "seq": seq}, {"_id": 0})

    async def read(
        self, job_id: ObjectId, from_seq: int = 0, limit: int | None = None
    ) -> list[LogBatch]:
        """Stored batches covering lines from `from_seq`, the first one trimmed to start there.

        A batch that starts before `from_seq` but reaches past it is found through the
        highest batch start <= from_seq, so a client resuming mid-batch loses nothing.
        """
        first = await self.collection.find_one(
            {"jobId": job_id, "seq": {"$lte": from_seq}},
            sort=[("seq", DESCENDING)],
            projection={"seq": 1},
        )
        start = from_seq if first is None else first["seq"]
        cursor = (
            self.collection.find(
                {"jobId": job_id, "seq": {"$gte": start}}, {"_id": 0, "jobId": 0, "attemptId": 0}
            )
            .sort("seq", ASCENDING)
            .batch_size(READ_BATCH_DOCS)
        )
        if limit is not None:
            cursor = cursor.limit(limit + 1)  # every batch has a line; +1 for the trimmed first
        out: list[LogBatch] = []
        taken = 0
        async with cursor:
            async for stored in cursor:
                batch = trim_batch(stored, from_seq)
                if batch is None:
                    continue
                if limit is not None and taken + len(batch["lines"]) > limit:
                    batch["lines"] = batch["lines"][: limit - taken]
                if batch["lines"]:
                    out.append(batch)
                    taken += len(batch["lines"])
                if limit is not None and taken >= limit:
                    break
        return out

    async def watch(self, *, resume_after: Any) -> AsyncChangeStream[Any]:
        """Inserted batches of every job, as they are committed."""
        return await self.collection.watch(
            [{"$match": {"operationType": {"$in": ["insert", "invalidate"]}}}],
            resume_after=resume_after,
        )
