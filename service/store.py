"""The job store: every read and write of the four collections of DESIGN.md.

Every change of a job's `status`, `worker` or lease is a compare-and-set on `version`
(`$inc: {version: 1}`), so two processes can never both believe they own a job. A lost race
comes back as `None` (or a result that says so), never as an exception: losing is normal
when several workers and API processes share one queue. Nothing here needs transactions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridOut
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from service.jobstatus import Status

Job = dict[str, Any]

LOG_STREAMS = ("stdout", "stderr", "system")
# GridFS bucket of the files a successful run wrote (the trained network).
ARTIFACTS_BUCKET = "artifacts"
MAX_LIST_LIMIT = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_job_id(job_id: str | ObjectId) -> ObjectId | None:
    """A malformed id is simply an unknown job: callers answer 404, never 500."""
    if isinstance(job_id, ObjectId):
        return job_id
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        return None


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    gpu: str

    def as_doc(self) -> dict[str, str]:
        return {"id": self.id, "host": self.host, "gpu": self.gpu}


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was Pending, now Cancelled
    REQUESTED = "requested"  # Running: the owning worker will stop it
    ALREADY_REQUESTED = "already_requested"
    FINISHED = "finished"  # nothing to cancel
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    job: Job | None


@dataclass(frozen=True)
class ExpiredLease:
    job_id: ObjectId
    action: str  # "requeued" | "failed" | "cancelled"


def request_hash(body: dict[str, Any]) -> str:
    """Stable digest of a submission, so a reused Idempotency-Key with another body is seen."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def artifacts_bucket(db: AsyncDatabase) -> AsyncGridFSBucket:
    return AsyncGridFSBucket(db, bucket_name=ARTIFACTS_BUCKET)


def new_job_document(
    hyperparameters: dict[str, Any], *, name: str | None, max_attempts: int
) -> Job:
    """A Pending job with every field of DESIGN.md's job document, so readers never meet a
    missing key. The API's batching inserter writes these too, without the store's
    idempotency handling."""
    now = utcnow()
    return {
        "_id": ObjectId(),
        "name": name,
        "status": Status.PENDING.value,
        "version": 0,
        "hyperparameters": dict(hyperparameters),
        "createdAt": now,
        "updatedAt": now,
        "startedAt": None,
        "finishedAt": None,
        "worker": None,
        "leaseExpiresAt": None,
        "attempt": 0,
        "maxAttempts": max_attempts,
        "cancelRequested": False,
        "exitCode": None,
        "error": None,
        "latestMetrics": None,
    }


class Store:
    """Thin async layer over the collections; holds no state of its own beyond handles."""

    def __init__(self, client: AsyncMongoClient, db_name: str) -> None:
        self.client = client
        self.db: AsyncDatabase = client[db_name]
        self.jobs: AsyncCollection = self.db["jobs"]
        self.job_logs: AsyncCollection = self.db["job_logs"]
        self.job_metrics: AsyncCollection = self.db["job_metrics"]
        self.stream_offsets: AsyncCollection = self.db["stream_offsets"]

    async def ensure_indexes(self) -> None:
        """Idempotent; every process calls it at start so no deploy step is needed."""
        await self.jobs.create_index([("status", ASCENDING), ("_id", ASCENDING)])
        await self.jobs.create_index([("status", ASCENDING), ("leaseExpiresAt", ASCENDING)])
        # Sparse: only jobs submitted with an Idempotency-Key carry the field.
        await self.jobs.create_index("idempotencyKey", unique=True, sparse=True)
        await self.job_logs.create_index([("jobId", ASCENDING), ("seq", ASCENDING)], unique=True)
        await self.job_metrics.create_index(
            [("jobId", ASCENDING), ("epoch", ASCENDING)], unique=True
        )

    async def ping(self) -> None:
        await self.db.command("ping")

    # -- submit and read ---------------------------------------------------------------

    async def insert_job(
        self,
        hyperparameters: dict[str, Any],
        *,
        name: str | None = None,
        max_attempts: int = 3,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a Pending job; returns (job, created).

        With an idempotency key the unique index decides who wins a race of retries: the
        loser reads the winner's job instead of inserting a second one.
        """
        doc = new_job_document(hyperparameters, name=name, max_attempts=max_attempts)
        if idempotency_key is not None:
            doc["idempotencyKey"] = idempotency_key
            doc["requestHash"] = body_hash
        try:
            await self.jobs.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.jobs.find_one({"idempotencyKey": idempotency_key})
            if existing is None:  # deleted between the two calls; the key is free again
                return await self.insert_job(
                    hyperparameters,
                    name=name,
                    max_attempts=max_attempts,
                    idempotency_key=idempotency_key,
                    body_hash=body_hash,
                )
            return existing, False
        return doc, True

    async def get_job(self, job_id: str | ObjectId) -> Job | None:
        oid = parse_job_id(job_id)
        if oid is None:
            return None
        return await self.jobs.find_one({"_id": oid})

    async def open_artifact(self, job: Job, name: str) -> AsyncGridOut | None:
        """Only files the job's `artifacts` list names are served: a GridFS filename is not
        a capability, and a file of a run that lost its finish race is not the job's."""
        for art in job.get("artifacts") or []:
            if art.get("name") == name:
                return await artifacts_bucket(self.db).open_download_stream(art["fileId"])
        return None

    async def list_jobs(
        self, *, status: str | None = None, limit: int = 50, after: str | ObjectId | None = None
    ) -> list[Job]:
        """Newest first; `after` is the id of the last job of the previous page.

        Paging by `_id` rather than by skip keeps pages stable while jobs are inserted.
        """
        query: dict[str, Any] = {}
        if status is not None:
            query["status"] = status
        if after is not None:
            oid = parse_job_id(after)
            if oid is None:
                raise ValueError(f"after={after!r} is not a job id")
            query["_id"] = {"$lt": oid}
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        cursor = self.jobs.find(query).sort("_id", DESCENDING).limit(limit)
        return await cursor.to_list(length=limit)

    async def count_by_status(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        async for row in await self.jobs.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        ):
            counts[row["_id"]] = row["n"]
        return counts

    async def pending_jobs(self, limit: int = 100) -> list[Job]:
        """Oldest first: the order in which a worker catches up after a restart."""
        cursor = (
            self.jobs.find({"status": Status.PENDING.value}).sort("_id", ASCENDING).limit(limit)
        )
        return await cursor.to_list(length=limit)

    # -- compare-and-set transitions ------------------------------------------------------

    async def claim(self, job: Job, worker: WorkerInfo, lease_s: float) -> Job | None:
        """The claim of DESIGN.md; `None` means another worker (or a cancel) won."""
        now = utcnow()
        return await self.jobs.find_one_and_update(
            {"_id": job["_id"], "status": Status.PENDING.value, "version": job["version"]},
            {
                "$set": {
                    "status": Status.RUNNING.value,
                    "worker": worker.as_doc(),
                    "startedAt": now,
                    "updatedAt": now,
                    "leaseExpiresAt": now + timedelta(seconds=lease_s),
                    "exitCode": None,
                    "error": None,
                },
                "$inc": {"version": 1, "attempt": 1},
            },
            return_document=ReturnDocument.AFTER,
        )

    async def renew_lease(self, job: Job, lease_s: float) -> Job | None:
        """Extend the lease of a job we own; `None` means we lost it and must stop."""
        now = utcnow()
        return await self.jobs.find_one_and_update(
            {
                "_id": job["_id"],
                "status": Status.RUNNING.value,
                "version": job["version"],
                "worker.id": job["worker"]["id"],
            },
            {
                "$set": {"leaseExpiresAt": now + timedelta(seconds=lease_s), "updatedAt": now},
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )

    async def finish(
        self,
        job: Job,
        status: Status,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Job | None:
        """Running -> Succeeded/Failed/Cancelled, only by the owner of the current version."""
        if not status.finished:
            raise ValueError(f"finish() needs a final status, not {status}")
        now = utcnow()
        return await self.jobs.find_one_and_update(
            {"_id": job["_id"], "status": Status.RUNNING.value, "version": job["version"]},
            {
                "$set": {
                    "status": status.value,
                    "finishedAt": now,
                    "updatedAt": now,
                    "leaseExpiresAt": None,
                    "exitCode": exit_code,
                    "error": error,
                    **(extra or {}),
                },
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )

    async def release(self, job: Job, reason: str) -> Job | None:
        """Give a Running job back to the queue (worker shutdown); the attempt is not held
        against it, since the run did not fail."""
        now = utcnow()
        return await self.jobs.find_one_and_update(
            {"_id": job["_id"], "status": Status.RUNNING.value, "version": job["version"]},
            {
                "$set": {
                    "status": Status.PENDING.value,
                    "worker": None,
                    "leaseExpiresAt": None,
                    "updatedAt": now,
                    "error": reason,
                },
                "$inc": {"version": 1, "attempt": -1},
            },
            return_document=ReturnDocument.AFTER,
        )

    async def request_cancel(self, job_id: str | ObjectId) -> CancelResult:
        """Pending jobs are cancelled at once; Running ones are flagged for their worker.

        `cancelRequested` is not a change of status, worker or lease, so it does not bump
        `version`: bumping it would make the owner's next lease renewal look like a lost
        race, and the owner is exactly who must see the flag.
        """
        oid = parse_job_id(job_id)
        if oid is None:
            return CancelResult(CancelOutcome.NOT_FOUND, None)
        for _ in range(100):  # bounded: each round means another writer made progress
            job = await self.jobs.find_one({"_id": oid})
            if job is None:
                return CancelResult(CancelOutcome.NOT_FOUND, None)
            status = Status(job["status"])
            if status.finished:
                return CancelResult(CancelOutcome.FINISHED, job)
            now = utcnow()
            if status is Status.PENDING:
                done = await self.jobs.find_one_and_update(
                    {"_id": oid, "status": Status.PENDING.value, "version": job["version"]},
                    {
                        "$set": {
                            "status": Status.CANCELLED.value,
                            "cancelRequested": True,
                            "finishedAt": now,
                            "updatedAt": now,
                        },
                        "$inc": {"version": 1},
                    },
                    return_document=ReturnDocument.AFTER,
                )
                if done is not None:
                    return CancelResult(CancelOutcome.CANCELLED, done)
                continue
            if job.get("cancelRequested"):
                return CancelResult(CancelOutcome.ALREADY_REQUESTED, job)
            flagged = await self.jobs.find_one_and_update(
                {"_id": oid, "status": Status.RUNNING.value},
                {"$set": {"cancelRequested": True, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
            )
            if flagged is not None:
                return CancelResult(CancelOutcome.REQUESTED, flagged)
        raise RuntimeError(f"cancel of job {oid} kept losing races")  # pragma: no cover

    async def expire_leases(self, now: datetime | None = None) -> list[ExpiredLease]:
        """Re-queue Running jobs whose worker stopped renewing (or fail them at maxAttempts).

        Any worker may call this; the compare-and-set makes sure each expired lease is
        acted on once even when several workers sweep at the same moment.
        """
        now = now or utcnow()
        out: list[ExpiredLease] = []
        cursor = self.jobs.find({"status": Status.RUNNING.value, "leaseExpiresAt": {"$lt": now}})
        async for job in cursor:
            worker = (job.get("worker") or {}).get("id", "?")
            cas = {"_id": job["_id"], "status": Status.RUNNING.value, "version": job["version"]}
            if job.get("cancelRequested"):
                update: dict[str, Any] = {
                    "status": Status.CANCELLED.value,
                    "finishedAt": now,
                    "error": f"worker {worker} lost while cancelling",
                }
                action = "cancelled"
            elif job.get("attempt", 0) >= job.get("maxAttempts", 1):
                update = {
                    "status": Status.FAILED.value,
                    "finishedAt": now,
                    "error": (
                        f"lease expired on worker {worker} at attempt {job.get('attempt')} "
                        f"of {job.get('maxAttempts')}; no attempts left"
                    ),
                }
                action = "failed"
            else:
                update = {
                    "status": Status.PENDING.value,
                    "worker": None,
                    "error": f"lease expired on worker {worker}; re-queued",
                }
                action = "requeued"
            update |= {"leaseExpiresAt": None, "updatedAt": now}
            done = await self.jobs.find_one_and_update(
                cas, {"$set": update, "$inc": {"version": 1}}
            )
            if done is not None:
                out.append(ExpiredLease(job["_id"], action))
        return out

    async def next_lease_expiry(self) -> datetime | None:
        """When the soonest Running lease passes, so a sweeper can sleep until exactly then."""
        job = await self.jobs.find_one(
            {"status": Status.RUNNING.value, "leaseExpiresAt": {"$ne": None}},
            sort=[("leaseExpiresAt", ASCENDING)],
            projection={"leaseExpiresAt": 1},
        )
        return None if job is None else job["leaseExpiresAt"]

    # -- writes by the owner of a Running job ------------------------------------------

    async def set_latest_metrics(self, job: Job, metrics: dict[str, Any]) -> bool:
        """Guarded by ownership, so a worker that lost its lease writes nothing more."""
        result = await self.jobs.update_one(
            {"_id": job["_id"], "status": Status.RUNNING.value, "worker.id": job["worker"]["id"]},
            {"$set": {"latestMetrics": metrics, "updatedAt": utcnow()}},
        )
        return result.matched_count == 1

    async def write_metrics(
        self, job_id: ObjectId, epoch: int, epochs: int, values: dict[str, float]
    ) -> None:
        """One document per epoch; an upsert so a retried write never makes two."""
        await self.job_metrics.update_one(
            {"jobId": job_id, "epoch": epoch},
            {"$set": {"epochs": epochs, **values, "ts": utcnow()}},
            upsert=True,
        )

    async def get_metrics(self, job_id: ObjectId) -> list[dict[str, Any]]:
        cursor = self.job_metrics.find({"jobId": job_id}, {"_id": 0}).sort("epoch", ASCENDING)
        return await cursor.to_list(length=None)

    # -- logs ------------------------------------------------------------------------------

    async def next_log_seq(self, job_id: ObjectId) -> int:
        last = await self.job_logs.find_one(
            {"jobId": job_id}, sort=[("seq", DESCENDING)], projection={"seq": 1, "lines": 1}
        )
        return 0 if last is None else last["seq"] + len(last["lines"])

    async def append_logs(
        self,
        job_id: ObjectId,
        stream: str,
        lines: Sequence[str],
        *,
        expected_seq: int | None = None,
    ) -> int:
        """Append one batch and return the `seq` it was stored at.

        The next seq is the end of the highest batch; the unique (jobId, seq) index turns a
        concurrent append into a duplicate-key error, and the loser re-reads the end and
        tries again. So batches tile the log with no gap and no overlap, and nothing is
        reserved that a crash could leave as a hole. A single writer passes the seq it
        expects and pays no read at all.
        """
        if stream not in LOG_STREAMS:
            raise ValueError(f"stream must be one of {LOG_STREAMS}, not {stream!r}")
        if not lines:
            raise ValueError("a log batch needs at least one line")
        seq = expected_seq if expected_seq is not None else await self.next_log_seq(job_id)
        while True:
            try:
                await self.job_logs.insert_one(
                    {
                        "jobId": job_id,
                        "seq": seq,
                        "stream": stream,
                        "lines": list(lines),
                        "ts": utcnow(),
                    }
                )
                return seq
            except DuplicateKeyError:
                seq = await self.next_log_seq(job_id)

    async def read_logs(
        self, job_id: ObjectId, from_seq: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored batches covering lines from `from_seq`, the first one trimmed to start there.

        A batch that starts before `from_seq` but reaches past it is found through the
        highest batch start <= from_seq, so a client resuming mid-batch loses nothing.
        """
        first = await self.job_logs.find_one(
            {"jobId": job_id, "seq": {"$lte": from_seq}}, sort=[("seq", DESCENDING)]
        )
        start = from_seq if first is None else first["seq"]
        cursor = self.job_logs.find(
            {"jobId": job_id, "seq": {"$gte": start}}, {"_id": 0, "jobId": 0}
        ).sort("seq", ASCENDING)
        out: list[dict[str, Any]] = []
        taken = 0
        async for batch in cursor:
            batch = trim_batch(batch, from_seq)
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

    # -- change-stream offsets ---------------------------------------------------------

    async def load_offset(self, name: str) -> Any | None:
        doc = await self.stream_offsets.find_one({"_id": name})
        return None if doc is None else doc.get("token")

    async def save_offset(self, name: str, token: Any) -> None:
        await self.stream_offsets.update_one(
            {"_id": name}, {"$set": {"token": token, "updatedAt": utcnow()}}, upsert=True
        )

    async def clear_offset(self, name: str) -> None:
        await self.stream_offsets.delete_one({"_id": name})


def trim_batch(batch: dict[str, Any], from_seq: int) -> dict[str, Any] | None:
    """The part of a log batch at or after `from_seq`; `None` if it lies wholly before."""
    seq, lines = batch["seq"], batch["lines"]
    if seq + len(lines) <= from_seq:
        return None
    if seq >= from_seq:
        return batch
    return {**batch, "seq": from_seq, "lines": lines[from_seq - seq :]}
