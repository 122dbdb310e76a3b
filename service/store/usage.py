"""What each user and each sweep used: jobs by status, slot-hours (a run's Running time
times its one slot, GPU and CPU apart) and the bytes stored for their jobs (log lines,
files of every job bucket). `GET /usage` and `gatequeue usage` show it (docs/api.md,
"Usage").

Everything is summed by MongoDB (aggregations grouped by user and sweep), never by walking
the jobs here: a shared queue holds months of jobs, and their logs far more. The jobs
counted are those of the period: created at or after `since`, or not finished by then
(still running, or finished since). Running time is clipped to the period; a job still
Running counts up to now by the server's clock. Stored bytes are what is stored now for the
period's jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from service.jobs.status import Status
from service.store.files import ARTIFACTS_BUCKET, CHECKPOINTS_BUCKET

# The buckets whose files belong to one job (`metadata.jobId`).
JOB_BUCKETS = (ARTIFACTS_BUCKET, CHECKPOINTS_BUCKET)
_MS_PER_HOUR = 3_600_000.0
# A slot is a CPU slot where the claiming worker's `gpu` says so (docs/worker.md).
CPU_SLOT = "cpu"


@dataclass
class Usage:
    """One user's or one sweep's use of the queue in a period."""

    user: str | None
    sweepId: ObjectId | None = None
    jobs: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    gpuMs: float = 0.0
    cpuMs: float = 0.0
    logBytes: int = 0
    fileBytes: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user}
        if self.sweepId is not None:
            out["sweepId"] = str(self.sweepId)
        out.update(
            jobs=dict(self.jobs),
            slotHours={
                "gpu": round(self.gpuMs / _MS_PER_HOUR, 6),
                "cpu": round(self.cpuMs / _MS_PER_HOUR, 6),
            },
            logBytes=self.logBytes,
            fileBytes=self.fileBytes,
        )
        return out


@dataclass
class UsageReport:
    since: datetime | None
    users: list[Usage]
    sweeps: list[Usage]

    def to_json(self) -> dict[str, Any]:
        from service.jobs.record import iso  # the API's one time format

        return {
            "since": None if self.since is None else iso(self.since),
            "users": [u.to_json() for u in self.users],
            "sweeps": [s.to_json() for s in self.sweeps],
        }


def _in_period(since: datetime | None, user: str | None, *, prefix: str = "") -> dict[str, Any]:
    """The jobs of the period (and of `user`, when one is named), as a `$match` on a job
    document or, with `prefix`, on one joined under that name."""
    clauses: list[dict[str, Any]] = []
    if since is not None:
        clauses.append(
            {"$or": [{f"{prefix}createdAt": {"$gte": since}},
                     {f"{prefix}finishedAt": None},
                     {f"{prefix}finishedAt": {"$gte": since}}]}
        )  # fmt: skip
    if user is not None:
        clauses.append({f"{prefix}submittedBy": user})
    return {"$and": clauses} if clauses else {}


class UsageStore:
    """Aggregations over `jobs`, `job_logs` and the job buckets' `files`."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def report(
        self, *, since: datetime | None = None, user: str | None = None, only_user: bool = False
    ) -> UsageReport:
        """Every user's and sweep's usage; with `only_user`, `user`'s alone (None is the
        jobs of an open API, submitted by nobody named)."""
        who = user if only_user else None
        users: dict[str | None, Usage] = {}
        sweeps: dict[ObjectId, Usage] = {}

        def rows(key: dict[str, Any]) -> Iterable[Usage]:
            name = key.get("user")
            if only_user and name != user:
                return ()
            out = [users.setdefault(name, Usage(name))]
            sweep = key.get("sweep")
            if sweep is not None:
                out.append(sweeps.setdefault(sweep, Usage(name, sweep)))
            return out

        for key, n, ms in await self._jobs(since, who):
            for usage in rows(key):
                usage.jobs[key["status"]] = usage.jobs.get(key["status"], 0) + n
                if key.get("cpu"):
                    usage.cpuMs += ms
                else:
                    usage.gpuMs += ms
        for key, n in await self._log_bytes(since, who):
            for usage in rows(key):
                usage.logBytes += n
        for bucket in JOB_BUCKETS:
            for key, n in await self._file_bytes(bucket, since, who):
                for usage in rows(key):
                    usage.fileBytes += n
        if only_user:
            users.setdefault(user, Usage(user))  # the caller's own row, zeros included
        return UsageReport(
            since=since,
            users=sorted(users.values(), key=lambda u: u.user or ""),
            sweeps=sorted(sweeps.values(), key=lambda u: str(u.sweepId)),
        )

    async def _jobs(
        self, since: datetime | None, user: str | None
    ) -> list[tuple[dict[str, Any], int, float]]:
        """(user, sweep, status, cpu) -> (jobs, Running milliseconds in the period)."""
        start: Any = "$startedAt" if since is None else {"$max": ["$startedAt", since]}
        # A job handed back to the queue keeps its `startedAt` while Pending: not running.
        running_ms = {
            "$cond": [
                {"$and": [{"$ifNull": ["$startedAt", False]},
                          {"$ne": ["$status", Status.PENDING.value]}]},
                {"$max": [0, {"$subtract": [{"$ifNull": ["$finishedAt", "$$NOW"]}, start]}]},
                0,
            ]
        }
        pipeline: list[dict[str, Any]] = [
            {"$match": _in_period(since, user)},
            {"$group": {
                "_id": {"user": "$submittedBy", "sweep": "$sweepId", "status": "$status",
                        "cpu": {"$eq": ["$worker.gpu", CPU_SLOT]}},
                "n": {"$sum": 1},
                "ms": {"$sum": running_ms},
            }},
        ]  # fmt: skip
        cursor = await self.db["jobs"].aggregate(pipeline)
        return [(row["_id"], int(row["n"]), float(row["ms"])) async for row in cursor]

    async def _by_owner(
        self,
        collection: str,
        pipeline: list[dict[str, Any]],
        since: datetime | None,
        user: str | None,
    ) -> list[tuple[dict[str, Any], int]]:
        """`pipeline` gives `{_id: jobId, bytes}` rows; each is joined to its job, kept if
        the job is in the period, and summed per (user, sweep)."""
        pipeline = [
            *pipeline,
            {"$lookup": {"from": "jobs", "localField": "_id", "foreignField": "_id",
                         "as": "job"}},
            {"$unwind": "$job"},
            {"$match": _in_period(since, user, prefix="job.")},
            {"$group": {"_id": {"user": "$job.submittedBy", "sweep": "$job.sweepId"},
                        "bytes": {"$sum": "$bytes"}}},
        ]  # fmt: skip
        cursor = await self.db[collection].aggregate(pipeline)
        return [(row["_id"], int(row["bytes"])) async for row in cursor]

    async def _log_bytes(
        self, since: datetime | None, user: str | None
    ) -> list[tuple[dict[str, Any], int]]:
        """UTF-8 bytes of the stored log lines."""
        line_bytes = {
            "$reduce": {"input": "$lines", "initialValue": 0,
                        "in": {"$add": ["$$value", {"$strLenBytes": "$$this"}]}}
        }  # fmt: skip
        per_job = [{"$group": {"_id": "$jobId", "bytes": {"$sum": line_bytes}}}]
        return await self._by_owner("job_logs", per_job, since, user)

    async def _file_bytes(
        self, bucket: str, since: datetime | None, user: str | None
    ) -> list[tuple[dict[str, Any], int]]:
        per_job: list[dict[str, Any]] = [
            {"$match": {"metadata.jobId": {"$type": "objectId"}}},
            {"$group": {"_id": "$metadata.jobId", "bytes": {"$sum": "$length"}}},
        ]
        return await self._by_owner(f"{bucket}.files", per_job, since, user)
