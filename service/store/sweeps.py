"""The `sweeps` collection: the sweep records and the reservations of `maxParallel`.

`maxParallel` is a constraint across documents (how many of a sweep's jobs are Running),
which a compare-and-set on one job cannot see. So a claim of a capped sweep's job first
takes one of the sweep's slots: an `$expr` update on the sweep document that adds the
attempt's id to `running` only while `running` is shorter than `maxParallel`. MongoDB
applies it atomically, so two workers can never both take the last slot. The claim of the
job follows with the same attempt id; the slot is given back when that attempt stops
running (finished, handed back, or its lease expired), and a slot whose claim never
happened (a worker died in between) is given back by the reconciliation of
`stale_reservations` after a grace period (docs/sweeps.md, "maxParallel").
"""

from __future__ import annotations

import builtins
from typing import Any

import structlog
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.config import DEFAULT_IDEMPOTENCY_TTL_S
from service.retry import retry
from service.store import idempotency
from service.store.errors import SweepInProgress, SweepKeyReused
from service.store.outcome import outcome_unknown
from service.sweeps.record import SweepRecord, SweepState

log = structlog.get_logger(__name__)


def _sweep(doc: dict[str, Any] | None) -> SweepRecord | None:
    return None if doc is None else SweepRecord.from_doc(doc)


class SweepStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("idempotencyKey", unique=True, sparse=True)
        await self.collection.create_index([("state", ASCENDING), ("creatingUntil", ASCENDING)])
        await self.collection.create_index([("submittedBy", ASCENDING), ("_id", DESCENDING)])

    async def insert(
        self,
        sweep: SweepRecord,
        *,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        key_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S,
    ) -> tuple[SweepRecord, bool]:
        """(the sweep, created). With a key (the submitter's, remembered for `key_ttl_s`:
        service.store.idempotency), a replay finds the first request's sweep."""
        doc = sweep.to_doc()
        stored_key = None
        if idempotency_key is not None:
            stored_key = idempotency.scoped(sweep.submittedBy, idempotency_key)
            doc["idempotencyKey"] = stored_key
            doc["requestHash"] = body_hash
        while True:
            try:
                await self.collection.insert_one(doc)
                return sweep, True
            except DuplicateKeyError:
                if stored_key is None:  # pragma: no cover - only the key's index is unique
                    raise
                if await idempotency.free_if_expired(self.collection, stored_key, key_ttl_s):
                    continue
                existing = await self.collection.find_one({"idempotencyKey": stored_key})
                if existing is None:  # removed meanwhile (a failed creation): try again
                    continue
                found = SweepRecord.from_doc(existing)
                if existing.get("requestHash") != body_hash:
                    raise SweepKeyReused(found) from None
                if found.state is SweepState.CREATING:
                    raise SweepInProgress(found) from None
                return found, False

    async def key_used(
        self,
        submitted_by: str | None,
        idempotency_key: str,
        key_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S,
    ) -> bool:
        """Whether `submitted_by` made a sweep with this Idempotency-Key that is still
        remembered (a replay: no quota)."""
        stored_key = idempotency.scoped(submitted_by, idempotency_key)
        found = await self.collection.find_one(idempotency.live(stored_key, key_ttl_s), {"_id": 1})
        return found is not None

    # -- the controller (service.sweeps.controller) ----------------------------------------

    async def decide(
        self, sweep_id: ObjectId, version: int, update: dict[str, Any], *, live: bool = False
    ) -> bool:
        """Apply one decision of the sweep's controller (`update`, a `$push`) only if no other
        decision came since `version` was read (and, with `live`, the sweep is not
        cancelled): the compare-and-set that makes one actor decide at a time. False: another
        one came first; re-read and decide again. A lost reply raises: the caller re-reads to
        see whether its decision is there (docs/sweeps.md, "One controller")."""
        query: dict[str, Any] = {"_id": sweep_id, "controlVersion": version}
        if version == 0:  # sweeps stored before the field existed
            query = {"_id": sweep_id, "controlVersion": {"$in": [0, None]}}
        if live:
            query["cancelRequested"] = {"$ne": True}
        result = await self.collection.update_one(query, {**update, "$inc": {"controlVersion": 1}})
        return result.modified_count == 1

    async def mark_made(
        self, sweep_id: ObjectId, trials: builtins.list[int], *, all_made: bool
    ) -> None:
        """Note that these trials' runs were inserted (service.sweeps.controller); with
        `all_made`, every trial's were: the tidier's pass leaves the sweep alone from then."""
        update: dict[str, Any] = {"$addToSet": {"made": {"$each": trials}}}
        if all_made:
            update["$set"] = {"allMade": True}
        await self.collection.update_one({"_id": sweep_id}, update)

    async def searching_dataset(self, dataset_id: ObjectId) -> SweepRecord | None:
        """A random or TPE sweep on the data set with trials still to make (it may not be
        deleted meanwhile: those runs would train on nothing)."""
        cursor = self.collection.find(
            {"datasetRef.id": dataset_id, "cancelRequested": {"$ne": True},
             "search.type": {"$in": ["random", "tpe"]}},
        )  # fmt: skip
        async for doc in cursor:
            sweep = SweepRecord.from_doc(doc)
            if sweep.unmade_runs():
                return sweep
        return None

    async def adaptive_active(self) -> builtins.list[ObjectId]:
        """Ready, not cancelled sweeps of a random or TPE search with trials still to make
        (the tidier's pass makes the trials a dead controller left unmade)."""
        cursor = self.collection.find(
            {"state": SweepState.READY.value, "cancelRequested": {"$ne": True},
             "search.type": {"$in": ["random", "tpe"]}, "allMade": {"$ne": True}},
            {"_id": 1},
        )  # fmt: skip
        return [doc["_id"] async for doc in cursor]

    async def mark_ready(self, sweep_id: ObjectId) -> None:
        await self.collection.update_one(
            {"_id": sweep_id}, {"$set": {"state": SweepState.READY.value, "creatingUntil": None}}
        )

    async def delete(self, sweep_id: ObjectId) -> None:
        await self.collection.delete_one({"_id": sweep_id})

    async def get(self, sweep_id: ObjectId) -> SweepRecord | None:
        return _sweep(await self.collection.find_one({"_id": sweep_id}))

    async def list(
        self, *, limit: int, after: ObjectId | None = None, submitted_by: str | None = None
    ) -> builtins.list[SweepRecord]:
        """Newest first, paged by `_id` (stable while sweeps are added)."""
        query: dict[str, Any] = {"state": SweepState.READY.value}
        if after is not None:
            query["_id"] = {"$lt": after}
        if submitted_by is not None:
            query["submittedBy"] = submitted_by
        out: builtins.list[SweepRecord] = []
        cursor = self.collection.find(query).sort("_id", DESCENDING).batch_size(limit)
        try:
            async for doc in cursor:
                try:
                    out.append(SweepRecord.from_doc(doc))
                except ValueError as exc:
                    # One record this version cannot read must not hide every other one.
                    log.error("sweep record unreadable; not listed", sweep=doc.get("_id"),
                              error=str(exc)[:500])  # fmt: skip
                    continue
                if len(out) == limit:
                    break
        finally:
            await cursor.close()
        return out

    async def abandoned(self) -> builtins.list[ObjectId]:
        """Sweeps whose creation should have ended by now (the API creating them died)."""
        cursor = self.collection.find(
            {"state": SweepState.CREATING.value, "$expr": {"$lt": ["$creatingUntil", "$$NOW"]}},
            {"_id": 1},
        )
        return [doc["_id"] async for doc in cursor]

    async def request_cancel(self, sweep_id: ObjectId) -> SweepRecord | None:
        """Flag the sweep: no slot is taken for it any more. Idempotent."""
        return _sweep(
            await self.collection.find_one_and_update(
                {"_id": sweep_id},
                [
                    {
                        "$set": {
                            "cancelRequested": True,
                            "cancelledAt": {"$ifNull": ["$cancelledAt", "$$NOW"]},
                        }
                    }
                ],
                return_document=ReturnDocument.AFTER,
            )
        )

    # -- maxParallel ---------------------------------------------------------------------

    async def reserve(
        self, sweep_id: ObjectId, attempt_id: str, job_id: ObjectId, *, deadline: float
    ) -> bool:
        """Take one of the sweep's `maxParallel` slots for `attempt_id`; False if all are
        taken (or the sweep is cancelled). A lost reply is settled by re-reading."""
        entry = {"attemptId": attempt_id, "jobId": job_id, "at": "$$NOW"}
        try:
            result = await self.collection.update_one(
                {
                    "_id": sweep_id,
                    "cancelRequested": {"$ne": True},
                    "$expr": {"$lt": [{"$size": {"$ifNull": ["$running", []]}}, "$maxParallel"]},
                },
                [
                    {
                        "$set": {
                            "running": {"$concatArrays": [{"$ifNull": ["$running", []]}, [entry]]}
                        }
                    }
                ],
            )
            return result.modified_count == 1
        except Exception as exc:
            if not outcome_unknown(exc):
                raise
            doc = await retry(
                lambda: self.collection.find_one({"_id": sweep_id, "running.attemptId": attempt_id},
                                                 {"_id": 1}),
                deadline=deadline, operation="sweep_read",
            )  # fmt: skip
            return doc is not None

    async def free(self, sweep_id: ObjectId, attempt_id: str) -> bool:
        """Give back the slot of `attempt_id` (idempotent); True if one was held."""
        result = await self.collection.update_one(
            {"_id": sweep_id}, {"$pull": {"running": {"attemptId": attempt_id}}}
        )
        return result.modified_count == 1

    async def reserved(self, sweep_id: ObjectId) -> int:
        doc = await self.collection.find_one({"_id": sweep_id}, {"running": 1})
        return 0 if doc is None else len(doc.get("running") or [])

    async def reservations_older_than(
        self, seconds: float
    ) -> builtins.list[tuple[ObjectId, str, ObjectId]]:
        """(sweep id, attempt id, job id) of every slot taken more than `seconds` ago by the
        server's clock: candidates for the reconciliation."""
        cursor = await self.collection.aggregate(
            [
                {"$match": {"running.0": {"$exists": True}}},
                {"$unwind": "$running"},
                {
                    "$match": {
                        "$expr": {
                            "$lt": [
                                "$running.at",
                                {"$subtract": ["$$NOW", round(seconds * 1000)]},
                            ]
                        }
                    }
                },
                {"$project": {"attemptId": "$running.attemptId", "jobId": "$running.jobId"}},
            ]
        )
        return [(doc["_id"], doc["attemptId"], doc["jobId"]) async for doc in cursor]
