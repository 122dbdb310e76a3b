"""The `jobs` collection: submit, read, and every transition of a job.

Every change of a job's `status`, `worker` or lease bumps `version`, and the claim is a
compare-and-set on it, so two processes can never both believe they own a job
(docs/design.md, "The claim"). The claim gives the attempt a unique `attemptId`; every
later write of the attempt (renewal, metrics, final write) is conditioned on it, so a
retried write is harmless and "is this job still mine" is a field comparison. A write whose
reply was lost is resolved by re-reading the job (service.store.outcome), never guessed
from `version`. A lost race comes back as `None`, never as an exception: losing is normal
when several workers and API processes share one queue. Nothing here needs transactions.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.config import DEFAULT_IDEMPOTENCY_TTL_S
from service.jobs.options import RUN_NAMES
from service.jobs.record import (
    Checkpoint,
    Job,
    JobRecord,
    ResumedFrom,
    WorkerRef,
    new_attempt_id,
)
from service.jobs.status import Status
from service.retry import retry
from service.store import idempotency
from service.store.errors import IdempotencyKeyReused
from service.store.inserter import JobInserter
from service.store.outcome import outcome_unknown

# The claim order of docs/design.md: highest priority first, then the oldest.
CLAIM_ORDER: builtins.list[tuple[str, int]] = [("priority", DESCENDING), ("_id", ASCENDING)]
# Jobs of a sweep still being inserted carry `held: true` (server-only, like
# `idempotencyKey`): no worker may see them until the whole sweep is stored.
NOT_HELD: dict[str, Any] = {"held": {"$exists": False}}
SWEEP_BATCH = 500  # jobs per insert_many of a sweep
# A page of jobs at most (GET /jobs?limit=): one definition, enforced where the query is
# made; service.api.limits declares it to the API.
MAX_LIST_LIMIT = 200


def parse_job_id(job_id: str | ObjectId) -> ObjectId | None:
    """A malformed id is simply an unknown job: callers answer 404, never 500."""
    if isinstance(job_id, ObjectId):
        return job_id
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        return None


def request_hash(body: dict[str, Any]) -> str:
    """Stable digest of a submission, so a reused Idempotency-Key with another body is seen."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was Pending, now Cancelled
    REQUESTED = "requested"  # Running: the owning worker will stop it
    ALREADY_REQUESTED = "already_requested"
    FINISHED = "finished"  # nothing to cancel
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    job: JobRecord | None


class ExpiryAction(StrEnum):
    REQUEUED = "requeued"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ExpiredLease:
    job_id: ObjectId
    action: ExpiryAction
    error: str
    attempt_id: str | None = None
    sweep_id: ObjectId | None = None


class _LostRace(Exception):
    """A compare-and-set matched nothing: another writer changed the job since it was read."""


def _now_plus(seconds: float) -> Any:
    return {"$add": ["$$NOW", round(seconds * 1000)]} if seconds else "$$NOW"


def _pipeline(
    values: dict[str, Any],
    *,
    now: tuple[str, ...] = (),
    lease_s: float | None = None,
    add: dict[str, int] | None = None,
) -> builtins.list[dict[str, Any]]:
    """One `$set` stage: `values` as literals (a worker id or an error text that starts with
    `$` must not be read as a field path), the server's time in the `now` fields, the lease
    `lease_s` from now, and counters incremented."""
    stage: dict[str, Any] = {k: {"$literal": v} for k, v in values.items()}
    stage |= {k: "$$NOW" for k in now}
    if lease_s is not None:
        stage["leaseExpiresAt"] = _now_plus(lease_s)
    stage |= {k: {"$add": [f"${k}", n]} for k, n in (add or {}).items()}
    return [{"$set": stage}]


def _job(doc: dict[str, Any] | None) -> Job | None:
    return None if doc is None else Job.from_doc(doc)


class JobStore:
    """Thin async layer over `jobs`; holds no state beyond its handles and the inserter."""

    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection
        # Batches concurrent submissions into one insert_many (service.store.inserter).
        self.inserter = JobInserter(collection)

    async def ensure_indexes(self) -> None:
        # Jobs stored before priorities existed sort as 0, not below -100.
        await self.collection.update_many(
            {"priority": {"$exists": False}}, {"$set": {"priority": 0}}
        )
        await self.collection.create_index([("status", ASCENDING), *CLAIM_ORDER])
        await self.collection.create_index([("sweepId", ASCENDING), ("sweepIndex", ASCENDING)])
        await self.collection.create_index("held", sparse=True)
        # A run a sweep's search made: "<sweep id>:<index>", so a trial's run is made once,
        # however many controllers try (service.sweeps.controller).
        await self.collection.create_index("sweepSlot", unique=True, sparse=True)
        await self.collection.create_index([("status", ASCENDING), ("_id", ASCENDING)])
        await self.collection.create_index([("status", ASCENDING), ("leaseExpiresAt", ASCENDING)])
        await self.collection.create_index([("submittedBy", ASCENDING), ("status", ASCENDING)])
        await self.collection.create_index([("status", ASCENDING), ("finishedAt", ASCENDING)])
        # Sparse: only jobs submitted with an Idempotency-Key carry the field, and only while
        # the key is remembered; its value names the submitter (service.store.idempotency).
        await self.collection.create_index("idempotencyKey", unique=True, sparse=True)

    # -- submit and read -----------------------------------------------------------------

    async def insert(
        self,
        job: Job,
        *,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        key_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S,
    ) -> tuple[Job, bool]:
        """Store a new Pending job; returns (the job, created).

        Without a key the document joins the inserter's next batch. With one (the
        submitter's: service.store.idempotency), the unique index decides who wins a race of
        retries: the loser reads the winner's job instead of inserting a second one
        (`created` False), and raises IdempotencyKeyReused if that job was submitted with
        another body (`body_hash`, see `request_hash`). A key older than `key_ttl_s` is
        forgotten and makes a new job.
        """
        doc = job.to_doc()
        if idempotency_key is None:
            await self.inserter.insert(doc)
            return job, True
        stored_key = idempotency.scoped(job.submittedBy, idempotency_key)
        doc["idempotencyKey"] = stored_key
        doc["requestHash"] = body_hash
        while True:
            try:
                await self.collection.insert_one(doc)
                return job, True
            except DuplicateKeyError:
                if await idempotency.free_if_expired(self.collection, stored_key, key_ttl_s):
                    continue
                existing = await self.collection.find_one({"idempotencyKey": stored_key})
                if existing is None:  # deleted between the two calls; the key is free again
                    continue
                if existing.get("requestHash") != body_hash:
                    raise IdempotencyKeyReused(Job.from_doc(existing)) from None
                return Job.from_doc(existing), False

    async def get(self, job_id: str | ObjectId) -> Job | None:
        oid = parse_job_id(job_id)
        if oid is None:
            return None
        return _job(await self.collection.find_one({"_id": oid}))

    async def uses_dataset(self, dataset_id: ObjectId) -> Job | None:
        """A Pending or Running job training on the data set, if any (it may not be
        deleted meanwhile)."""
        return _job(
            await self.collection.find_one(
                {
                    "datasetRef.id": dataset_id,
                    "status": {"$in": [Status.PENDING.value, Status.RUNNING.value]},
                }
            )
        )

    async def exists(self, job_id: ObjectId) -> bool:
        return await self.collection.find_one({"_id": job_id}, {"_id": 1}) is not None

    async def existing(self, job_ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of `job_ids` name a job."""
        cursor = self.collection.find({"_id": {"$in": list(job_ids)}}, {"_id": 1})
        return {doc["_id"] async for doc in cursor}

    async def list(
        self,
        *,
        status: Status | str | None = None,
        limit: int = 50,
        after: str | ObjectId | None = None,
        submitted_by: str | None = None,
        sweep_id: ObjectId | None = None,
    ) -> builtins.list[Job]:
        """Newest first; `after` is the id of the last job of the previous page.

        Paging by `_id` rather than by skip keeps pages stable while jobs are inserted.
        """
        query: dict[str, Any] = {}
        if status is not None:
            query["status"] = Status(status).value
        if submitted_by is not None:
            query["submittedBy"] = submitted_by
        if sweep_id is not None:
            query["sweepId"] = sweep_id
        if after is not None:
            oid = parse_job_id(after)
            if oid is None:
                raise ValueError(f"after={after!r} is not a job id")
            query["_id"] = {"$lt": oid}
        limit = max(1, min(limit, MAX_LIST_LIMIT))
        cursor = self.collection.find(query).sort("_id", DESCENDING).limit(limit)
        return [Job.from_doc(doc) async for doc in cursor]

    async def count_by_status(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        async for row in await self.collection.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        ):
            counts[Status(row["_id"])] = row["n"]
        return counts

    async def count_by_status_and_priority(self) -> dict[tuple[Status, int], int]:
        """Jobs per (status, priority): `/metrics`' queue gauges."""
        counts: dict[tuple[Status, int], int] = {}
        pipeline = [{"$group": {"_id": {"s": "$status", "p": "$priority"}, "n": {"$sum": 1}}}]
        async for row in await self.collection.aggregate(pipeline):
            key = (Status(row["_id"]["s"]), int(row["_id"].get("p") or 0))
            counts[key] = counts.get(key, 0) + row["n"]
        return counts

    async def pending(
        self,
        limit: int = 100,
        *,
        skip_sweeps: Iterable[ObjectId] = (),
        fitting: Mapping[str, int | None] | None = None,
    ) -> builtins.list[Job]:
        """Claimable jobs in claim order (priority, then age), leaving out the sweeps named
        in `skip_sweeps` (a worker found their `maxParallel` reached) and, with `fitting`
        ({device kind: the most a free slot holds, None for unknown}), the jobs whose
        estimated memory no free slot holds."""
        query: dict[str, Any] = {"status": Status.PENDING.value, **NOT_HELD}
        skip = builtins.list(skip_sweeps)
        if skip:
            query["sweepId"] = {"$nin": skip}
        if fitting and all(cap is not None for cap in fitting.values()):
            query["$or"] = [
                {"memoryEstimate": None},
                *({f"memoryEstimate.{device}": {"$lte": cap}} for device, cap in fitting.items()),
            ]
        cursor = self.collection.find(query).sort(CLAIM_ORDER).limit(limit)
        return [Job.from_doc(doc) async for doc in cursor]

    async def queue_position(self, job: Job) -> int:
        """How many claimable jobs come before `job` in claim order."""
        priority = job.priority
        return await self.collection.count_documents(
            {
                "status": Status.PENDING.value,
                **NOT_HELD,
                "$or": [
                    {"priority": {"$gt": priority}},
                    {"priority": priority, "_id": {"$lt": job.id}},
                ],
            }
        )

    async def pending_count(self, submitted_by: str | None) -> int:
        """Pending jobs of one submitter (the quota of docs/security.md)."""
        return await self.collection.count_documents(
            {"status": Status.PENDING.value, "submittedBy": submitted_by}
        )

    async def pending_one(self, job_id: ObjectId) -> Job | None:
        """The job if it is Pending now (its current version, for a claim)."""
        return _job(
            await self.collection.find_one(
                {"_id": job_id, "status": Status.PENDING.value, **NOT_HELD}
            )
        )

    # -- the jobs of a sweep -------------------------------------------------------------

    async def insert_held(self, docs: builtins.list[dict[str, Any]]) -> None:
        """Store a sweep's job documents where no worker sees them (`held`), in bounded
        batches."""
        for start in range(0, len(docs), SWEEP_BATCH):
            batch = [{**d, "held": True} for d in docs[start : start + SWEEP_BATCH]]
            await self.collection.insert_many(batch, ordered=True)

    async def release_held(self, sweep_id: ObjectId) -> int:
        """Let workers see the sweep's jobs. Repeating it is harmless (`held` is gone)."""
        result = await self.collection.update_many(
            {"sweepId": sweep_id, "held": True}, {"$unset": {"held": ""}}
        )
        return result.modified_count

    async def held_sweeps(self) -> builtins.list[ObjectId]:
        """Sweeps with jobs still held (a creation that stopped half-way)."""
        return [s for s in await self.collection.distinct("sweepId", {"held": True}) if s]

    async def ids_of_sweep(self, sweep_id: ObjectId) -> builtins.list[ObjectId]:
        return await self.collection.distinct("_id", {"sweepId": sweep_id})

    async def delete_ids(self, job_ids: builtins.list[ObjectId]) -> int:
        """Remove job records (service.store.removal removes what is stored for them)."""
        return (await self.collection.delete_many({"_id": {"$in": job_ids}})).deleted_count

    async def finished_before(
        self,
        statuses: Iterable[Status],
        cutoff: datetime,
        limit: int,
        *,
        logs_kept: bool = False,
    ) -> builtins.list[ObjectId]:
        """Up to `limit` ids of jobs in `statuses` that finished before `cutoff`, oldest
        first; `logs_kept`: only those whose logs retention has not removed yet."""
        query: dict[str, Any] = {
            "status": {"$in": [s.value for s in statuses]},
            "finishedAt": {"$lt": cutoff},
        }
        if logs_kept:
            query["logsRemovedAt"] = None
        cursor = self.collection.find(query, {"_id": 1}).sort("finishedAt", ASCENDING)
        return [doc["_id"] async for doc in cursor.limit(limit)]

    async def to_notify(
        self, statuses: Iterable[Status], since: datetime, limit: int
    ) -> builtins.list[Job]:
        """Up to `limit` jobs in `statuses` (the final ones) that finished after `since` and
        whose webhooks were not looked at yet (`notifiedAt` unset): service.webhooks."""
        query = {
            "status": {"$in": [s.value for s in statuses]},
            "finishedAt": {"$gte": since},
            "notifiedAt": None,
        }
        cursor = self.collection.find(query).sort("finishedAt", ASCENDING).limit(limit)
        return [Job.from_doc(doc) async for doc in cursor]

    async def mark_notified(self, job_ids: builtins.list[ObjectId]) -> None:
        await self.collection.update_many(
            {"_id": {"$in": job_ids}}, {"$currentDate": {"notifiedAt": True}}
        )

    async def sweep_counts(self, sweep_id: ObjectId) -> dict[str, int]:
        """A sweep's jobs by status, every status named."""
        counts = {s.value: 0 for s in Status}
        async for row in await self.collection.aggregate(
            [{"$match": {"sweepId": sweep_id}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        ):
            counts[row["_id"]] = row["n"]
        return counts

    async def mark_logs_removed(self, job_ids: builtins.list[ObjectId]) -> None:
        await self.collection.update_many(
            {"_id": {"$in": job_ids}}, {"$currentDate": {"logsRemovedAt": True}}
        )

    async def delete_sweep_jobs(self, sweep_id: ObjectId) -> int:
        return (await self.collection.delete_many({"sweepId": sweep_id})).deleted_count

    async def sweep_rows(self, sweep_id: ObjectId) -> builtins.list[dict[str, Any]]:
        """The documents of a sweep's jobs, with what a sweep view shows of each."""
        cursor = self.collection.find(
            {"sweepId": sweep_id},
            {"status": 1, "name": 1, "sweepIndex": 1, "hyperparameters": 1, "latestMetrics": 1,
             "startedAt": 1, "finishedAt": 1, "circuit": 1, "result": 1, "warnings": 1,
             "etaS": 1, "targetEpoch": 1, "stoppedEarly": 1, **{o: 1 for o in RUN_NAMES}},
        ).sort("sweepIndex", ASCENDING)  # fmt: skip
        return await cursor.to_list(length=None)

    async def cancel_sweep(self, sweep_id: ObjectId) -> tuple[int, int]:
        """Every Pending job of the sweep Cancelled, every Running one flagged for its
        worker; (cancelled, flagged). Repeated until a round changes nothing, so a job
        handed back to the queue while the first round ran is caught by the next."""
        cancelled = flagged = 0
        for _ in range(10):
            done = await self.collection.update_many(
                {"sweepId": sweep_id, "status": Status.PENDING.value},
                {
                    "$set": {"status": Status.CANCELLED.value, "cancelRequested": True,
                             "error": "its sweep was cancelled"},
                    "$currentDate": {"finishedAt": True, "updatedAt": True},
                    "$inc": {"version": 1},
                },
            )  # fmt: skip
            stop = await self.collection.update_many(
                {"sweepId": sweep_id, "status": Status.RUNNING.value,
                 "cancelRequested": {"$ne": True}},
                {"$set": {"cancelRequested": True}, "$currentDate": {"updatedAt": True}},
            )  # fmt: skip
            cancelled += done.modified_count
            flagged += stop.modified_count
            if not done.modified_count and not stop.modified_count:
                break
        return cancelled, flagged

    async def announce_next(self, sweep_id: ObjectId) -> None:
        """Touch the sweep's next claimable job so that every worker's change stream brings
        it: a slot of `maxParallel` was given back, and the worker that gave it back may
        not be the one with a free slot for it."""
        await self.collection.find_one_and_update(
            {"sweepId": sweep_id, "status": Status.PENDING.value, **NOT_HELD},
            {"$currentDate": {"announcedAt": True}},
            sort=CLAIM_ORDER,
            projection={"_id": 1},
        )

    async def watch(
        self,
        pipeline: builtins.list[dict[str, Any]],
        *,
        resume_after: Any,
        max_await_ms: int | None,
    ) -> AsyncChangeStream[Any]:
        """A change stream of job documents as they are after each change."""
        return await self.collection.watch(
            pipeline,
            full_document="updateLookup",
            resume_after=resume_after,
            max_await_time_ms=max_await_ms,
        )

    # -- compare-and-set transitions -----------------------------------------------------
    #
    # Times of transitions are the server's: leases are granted and expired by `$$NOW`, so
    # no two clocks need to agree (docs/reliability.md, "Time"). Updates that compute a time
    # are update pipelines, where values from outside go in `$literal`.

    def _cas(self, job: JobRecord, status: Status = Status.RUNNING) -> dict[str, Any]:
        return {"_id": job.id, "status": status.value, "version": job.version}

    @staticmethod
    def _mine(job: JobRecord) -> dict[str, Any]:
        """The filter of a write by the attempt that holds `job`."""
        return {"_id": job.id, "status": Status.RUNNING.value, "attemptId": job.attemptId}

    async def owns(self, job_id: ObjectId, attempt_id: str) -> bool:
        """Is `attempt_id` the attempt running the job now (the fence of log writes)."""
        doc = await self.collection.find_one(
            {"_id": job_id, "status": Status.RUNNING.value, "attemptId": attempt_id}, {"_id": 1}
        )
        return doc is not None

    async def _transition(
        self, query: dict[str, Any], update: dict[str, Any] | builtins.list[dict[str, Any]]
    ) -> JobRecord | None:
        return _job(
            await self.collection.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )
        )

    async def claim(
        self,
        job: JobRecord,
        worker: WorkerRef,
        lease_s: float,
        *,
        deadline: float | None = None,
        attempt_id: str | None = None,
    ) -> JobRecord | None:
        """The claim of docs/design.md; `None` means another worker (or a cancel) won.

        When the reply is lost the claim may have been applied: the job is re-read (until
        `deadline`, a `time.monotonic()` value) and it is ours exactly if it carries our new
        attempt id. Raises only if it cannot even be re-read by then.
        """
        attempt_id = attempt_id or new_attempt_id()
        deadline = deadline if deadline is not None else time.monotonic() + lease_s
        try:
            return await self._transition(
                {**self._cas(job, Status.PENDING), **NOT_HELD},
                _pipeline(
                    {
                        "status": Status.RUNNING.value,
                        "worker": worker.model_dump(),
                        "attemptId": attempt_id,
                        "exitCode": None,
                        "error": None,
                        "etaS": None,
                    },
                    now=("startedAt", "updatedAt"),
                    lease_s=lease_s,
                    add={"version": 1, "attempt": 1},
                ),
            )
        except Exception as exc:
            if not outcome_unknown(exc):
                raise
            current = await retry(lambda: self.get(job.id), deadline=deadline, operation="job_read")
            if current is not None and current.attemptId == attempt_id:
                return current
            return None

    async def renew_lease(self, job: JobRecord, lease_s: float) -> JobRecord | None:
        """Extend the lease of a job our attempt holds; `None` means the job is not ours any
        more and the run must stop. Conditioned on the attempt id, not on `version`, so a
        renewal resent after a lost reply simply renews again."""
        return await self._transition(
            self._mine(job),
            _pipeline({}, now=("updatedAt",), lease_s=lease_s, add={"version": 1}),
        )

    async def _settled(self, job: JobRecord, status: Status) -> JobRecord | None:
        """After a final write matched nothing: was it ours, applied by an earlier try whose
        reply was lost? Yes if the job now has our attempt id and the status we wrote."""
        current = await self.get(job.id)
        if current is not None and current.attemptId == job.attemptId and current.status is status:
            return current
        return None

    async def finish(
        self,
        job: JobRecord,
        status: Status,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """Running -> Succeeded/Failed/Cancelled, only by the attempt that holds the job."""
        if not status.finished:
            raise ValueError(f"finish() needs a final status, not {status}")
        done = await self._transition(
            self._mine(job),
            _pipeline(
                {
                    "status": status.value,
                    "leaseExpiresAt": None,
                    "exitCode": exit_code,
                    "error": error,
                    "etaS": None,
                    **(extra or {}),
                },
                now=("finishedAt", "updatedAt"),
                add={"version": 1},
            ),
        )
        return done if done is not None else await self._settled(job, status)

    async def insert_trial(self, doc: dict[str, Any]) -> bool:
        """Store a run a sweep's search made (`doc` carries its `sweepSlot`); False when a run
        of that slot exists already (another controller, or this one's lost reply)."""
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def promote(self, job: JobRecord, target: int | None) -> JobRecord | None:
        """A run its scheduler promoted: back to Pending (the attempt not held against it) to
        resume from its checkpoint towards `target` (None: to its `epochs`). Not if the job
        is being cancelled: the caller then ends it."""
        done = await self._transition(
            {**self._mine(job), "cancelRequested": {"$ne": True}},
            _pipeline(
                {"status": Status.PENDING.value, "worker": None, "leaseExpiresAt": None,
                 "error": None, "etaS": None, "targetEpoch": target},
                now=("updatedAt",),
                add={"version": 1, "attempt": -1},
            ),
        )  # fmt: skip
        if done is not None:
            return done
        current = await self.get(job.id)
        if (
            current is not None
            and current.attemptId == job.attemptId
            and current.status is Status.PENDING
            and current.targetEpoch == target
        ):
            return current
        return None

    async def release(self, job: JobRecord, reason: str) -> JobRecord | None:
        """Give a Running job back to the queue (worker shutdown); the attempt is not held
        against it, since the run did not fail."""
        done = await self._transition(
            self._mine(job),
            _pipeline(
                {"status": Status.PENDING.value, "worker": None, "leaseExpiresAt": None,
                 "error": reason, "etaS": None},
                now=("updatedAt",),
                add={"version": 1, "attempt": -1},
            ),
        )  # fmt: skip
        return done if done is not None else await self._settled(job, Status.PENDING)

    async def request_cancel(self, job_id: ObjectId) -> CancelResult:
        """Pending jobs are cancelled at once; Running ones are flagged for their worker.

        `cancelRequested` is not a change of status, worker or lease, so it does not bump
        `version`: the owner's renewals go on, and the owner is exactly who must see the
        flag. Each round re-reads the job, so a cancel whose reply was lost and is retried
        finds the job Cancelled and says so. A round that lost a race to another writer, or
        whose write's reply was lost, goes again (service.retry), at most 100 rounds: each
        lost race means another writer made progress.
        """
        maybe_ours = False  # a write of this call may have landed with its reply lost
        writing = False  # a failed read is not retried: only a write's outcome is unknown

        def again(exc: BaseException) -> bool:
            return isinstance(exc, _LostRace) or (writing and outcome_unknown(exc))

        def note(exc: BaseException, delay: float) -> None:
            nonlocal maybe_ours
            maybe_ours = maybe_ours or not isinstance(exc, _LostRace)  # the next read tells

        async def one_round() -> CancelResult:
            nonlocal writing
            writing = False
            job = await self.get(job_id)
            if job is None:
                return CancelResult(CancelOutcome.NOT_FOUND, None)
            if job.finished:
                ours = maybe_ours and job.status is Status.CANCELLED and job.cancelRequested
                return CancelResult(
                    CancelOutcome.CANCELLED if ours else CancelOutcome.FINISHED, job
                )
            if job.cancelRequested and maybe_ours:
                return CancelResult(CancelOutcome.REQUESTED, job)
            if job.status is Status.PENDING:
                writing = True
                done = await self._transition(
                    self._cas(job, Status.PENDING),
                    {
                        "$set": {"status": Status.CANCELLED.value, "cancelRequested": True},
                        "$currentDate": {"finishedAt": True, "updatedAt": True},
                        "$inc": {"version": 1},
                    },
                )
                if done is None:
                    raise _LostRace
                return CancelResult(CancelOutcome.CANCELLED, done)
            if job.cancelRequested:
                return CancelResult(CancelOutcome.ALREADY_REQUESTED, job)
            writing = True
            flagged = await self._transition(
                {"_id": job_id, "status": Status.RUNNING.value},
                {"$set": {"cancelRequested": True}, "$currentDate": {"updatedAt": True}},
            )
            if flagged is None:
                raise _LostRace
            return CancelResult(CancelOutcome.REQUESTED, flagged)

        try:
            return await retry(
                one_round,
                retry_on=(Exception,),
                retry_if=again,
                attempts=100,
                on_error=note,
                operation="cancel",
            )
        except _LostRace:  # pragma: no cover
            raise RuntimeError(f"cancel of job {job_id} kept losing races") from None

    async def expire_leases(self, *, ahead_s: float = 0.0) -> builtins.list[ExpiredLease]:
        """Re-queue Running jobs whose worker stopped renewing (or fail them at maxAttempts).

        "Expired" is by the server's clock (`ahead_s` looks that far into its future: tests).
        Any worker may call this; the compare-and-set makes sure each expired lease is acted
        on once even when several workers sweep at the same moment.
        """
        out: builtins.list[ExpiredLease] = []
        cursor = self.collection.find(
            {"status": Status.RUNNING.value, "leaseExpiresAt": {"$ne": None},
             "$expr": {"$lt": ["$leaseExpiresAt", _now_plus(ahead_s)]}}
        )  # fmt: skip
        async for doc in cursor:
            job = Job.from_doc(doc)
            worker = job.worker.id if job.worker is not None else "?"
            update: dict[str, Any]
            if job.cancelRequested:
                action = ExpiryAction.CANCELLED
                error = f"worker {worker} lost while cancelling"
                update = {"status": Status.CANCELLED.value}
            elif job.attempt >= job.maxAttempts:
                action = ExpiryAction.FAILED
                error = (
                    f"lease expired on worker {worker} at attempt {job.attempt} "
                    f"of {job.maxAttempts}; no attempts left"
                )
                update = {"status": Status.FAILED.value}
            else:
                action = ExpiryAction.REQUEUED
                error = f"lease expired on worker {worker}; re-queued"
                update = {"status": Status.PENDING.value, "worker": None}
            final = action is not ExpiryAction.REQUEUED
            done = await self.collection.find_one_and_update(
                self._cas(job),
                {
                    "$set": {**update, "error": error, "leaseExpiresAt": None, "etaS": None},
                    "$currentDate": {"updatedAt": True, **({"finishedAt": True} if final else {})},
                    "$inc": {"version": 1, "leaseExpiries": 1},
                },
            )
            if done is not None:
                out.append(ExpiredLease(job.id, action, error, job.attemptId, job.sweepId))
        return out

    async def seconds_to_next_expiry(self) -> float | None:
        """How long, by the server's clock, until the soonest Running lease passes (None: no
        lease), so a sweeper sleeps until exactly then whatever its own clock says."""
        rows = await (
            await self.collection.aggregate(
                [
                    {"$match": {"status": Status.RUNNING.value, "leaseExpiresAt": {"$ne": None}}},
                    {"$group": {"_id": None, "soonest": {"$min": "$leaseExpiresAt"}}},
                    {"$project": {"ms": {"$subtract": ["$soonest", "$$NOW"]}}},
                ]
            )
        ).to_list(length=1)
        return None if not rows else rows[0]["ms"] / 1000

    # -- writes by the owner of a Running job --------------------------------------------

    async def add_checkpoint(
        self, job: JobRecord, checkpoint: Checkpoint, *, keep: int = 2
    ) -> builtins.list[Checkpoint] | None:
        """Make `checkpoint` the job's latest, keeping the last `keep`; the checkpoints that
        fell out (their files are to be deleted), or None when the attempt does not hold the
        job: a stale attempt cannot replace the checkpoint of the one that holds it now."""
        entry = checkpoint.model_dump()
        before = await self.collection.find_one_and_update(
            self._mine(job),
            [
                {
                    "$set": {
                        "checkpoint": {"$literal": entry},
                        "checkpoints": {
                            "$slice": [
                                {
                                    "$concatArrays": [
                                        {"$ifNull": ["$checkpoints", []]},
                                        {"$literal": [entry]},
                                    ]
                                },
                                -keep,
                            ]
                        },
                        "updatedAt": "$$NOW",
                    }
                }
            ],
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        kept = [*Job.from_doc(before).checkpoints, checkpoint][-keep:]
        return [c for c in Job.from_doc(before).checkpoints if c not in kept]

    async def set_resumed_from(self, job: JobRecord, resumed: ResumedFrom | None) -> bool:
        result = await self.collection.update_one(
            self._mine(job),
            {"$set": {"resumedFrom": None if resumed is None else resumed.model_dump()}},
        )
        return result.matched_count == 1

    async def set_latest_metrics(
        self, job: JobRecord, metrics: dict[str, Any], *, eta_s: float | None = None
    ) -> bool:
        """Guarded by the attempt id, so an attempt that lost the job writes nothing more.
        `eta_s`: the run's estimated seconds to finish (service.jobs.eta), stored with them."""
        result = await self.collection.update_one(
            self._mine(job),
            {"$set": {"latestMetrics": metrics, "etaS": eta_s},
             "$currentDate": {"updatedAt": True}},
        )  # fmt: skip
        return result.matched_count == 1
