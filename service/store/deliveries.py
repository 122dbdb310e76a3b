"""`webhook_deliveries`: one document per (event, target), whose `_id` is that pair; the
replica whose insert creates it is the one that sends it (a second insert, from another API
replica, fails on the key and that replica does nothing). A delivery moves `pending` ->
`delivered` or `failed` (after `MAX_ATTEMPTS` tries); while it is pending its sender holds
it until `leaseExpiresAt` (the server's clock), renewed with each try, so a sender that
crashed is replaced once its lease lapses, and two never send at once
(docs/webhooks.md, "One sender per event").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    key: str
    deliveryId: str
    kind: str  # job | sweep
    subjectId: ObjectId
    event: str
    url: str
    source: str  # notify | server
    format: str
    body: bytes
    state: str = PENDING
    attempts: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Delivery:
        return cls(
            key=doc["_id"], deliveryId=doc["deliveryId"], kind=doc["kind"],
            subjectId=doc["subjectId"], event=doc["event"], url=doc["url"],
            source=doc["source"], format=doc["format"], body=bytes(doc["body"]),
            state=doc["state"], attempts=int(doc.get("attempts", 0)),
        )  # fmt: skip


def _lease(seconds: float) -> dict[str, Any]:
    return {"$add": ["$$NOW", round(seconds * 1000)]}


class DeliveryStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("kind", ASCENDING), ("subjectId", ASCENDING)])
        await self.collection.create_index([("state", ASCENDING), ("nextAttemptAt", ASCENDING)])

    async def create(self, delivery: Delivery, holder: str, lease_s: float) -> bool:
        """Record a delivery held by `holder`: True if this call made it (its caller sends
        it), False if it existed (another replica, or an earlier pass, has it)."""
        doc = {
            "_id": delivery.key, "deliveryId": delivery.deliveryId, "kind": delivery.kind,
            "subjectId": delivery.subjectId, "event": delivery.event, "url": delivery.url,
            "source": delivery.source, "format": delivery.format, "body": delivery.body,
            "state": PENDING, "attempts": 0, "lastError": None, "lastStatus": None,
            "holder": holder, "deliveredAt": None,
        }  # fmt: skip
        # Held from the insert on (by this replica's clock, then the server's below): a
        # document without a lease would look free to another replica's claim.
        soon = datetime.now(UTC) + timedelta(seconds=lease_s)
        doc |= {"leaseExpiresAt": soon, "nextAttemptAt": soon}
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            return False
        # The times by the server's clock, as every lease of the queue.
        await self.collection.update_one(
            {"_id": delivery.key, "holder": holder},
            [{"$set": {"createdAt": "$$NOW", "updatedAt": "$$NOW", "nextAttemptAt": "$$NOW",
                       "leaseExpiresAt": _lease(lease_s)}}],
        )  # fmt: skip
        return True

    async def claim_due(self, holder: str, lease_s: float) -> Delivery | None:
        """A pending delivery nobody holds (its sender's lease lapsed) whose next try is
        due, now held by `holder`; None when there is none."""
        doc = await self.collection.find_one_and_update(
            {"state": PENDING,
             "$expr": {"$and": [{"$lte": ["$nextAttemptAt", "$$NOW"]},
                                {"$lt": ["$leaseExpiresAt", "$$NOW"]}]}},
            [{"$set": {"holder": holder, "leaseExpiresAt": _lease(lease_s)}}],
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        return None if doc is None else Delivery.from_doc(doc)

    async def failed_try(
        self,
        key: str,
        holder: str,
        *,
        error: str,
        status: int | None,
        retry_in_s: float,
        lease_s: float,
    ) -> int | None:
        """Count a failed try; the holder keeps the delivery until its next try (plus
        `lease_s`). The tries so far, or None if `holder` no longer holds it."""
        doc = await self.collection.find_one_and_update(
            {"_id": key, "holder": holder, "state": PENDING},
            [{"$set": {
                "attempts": {"$add": ["$attempts", 1]}, "lastError": error[:500],
                "lastStatus": status, "updatedAt": "$$NOW",
                "nextAttemptAt": _lease(retry_in_s),
                "leaseExpiresAt": _lease(retry_in_s + lease_s),
            }}],
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip
        return None if doc is None else int(doc["attempts"])

    async def finish(
        self,
        key: str,
        holder: str,
        state: str,
        *,
        status: int | None = None,
        error: str | None = None,
    ) -> bool:
        """`delivered` (counting this try) or `failed` (the tries are spent)."""
        fields: dict[str, Any] = {"state": state, "updatedAt": "$$NOW", "holder": None,
                                  "leaseExpiresAt": None}  # fmt: skip
        if state == DELIVERED:
            fields |= {"deliveredAt": "$$NOW", "lastStatus": status, "lastError": None,
                       "attempts": {"$add": ["$attempts", 1]}}  # fmt: skip
        result = await self.collection.update_one(
            {"_id": key, "holder": holder, "state": PENDING}, [{"$set": fields}]
        )
        return result.modified_count == 1

    async def renew(self, key: str, holder: str, lease_s: float) -> bool:
        """Hold the delivery `lease_s` more, before a try: False when `holder` no longer
        holds it (its lease lapsed while it waited and another replica claimed it)."""
        result = await self.collection.update_one(
            {"_id": key, "holder": holder, "state": PENDING},
            [{"$set": {"leaseExpiresAt": _lease(lease_s)}}],
        )
        return result.modified_count == 1

    async def release(self, key: str, holder: str) -> None:
        """Let another replica take it at once (this one is stopping)."""
        await self.collection.update_one(
            {"_id": key, "holder": holder, "state": PENDING},
            [{"$set": {"holder": None, "leaseExpiresAt": "$$NOW"}}],
        )

    async def for_subject(self, kind: str, subject_id: ObjectId) -> list[dict[str, Any]]:
        cursor = self.collection.find({"kind": kind, "subjectId": subject_id}, {"body": 0}).sort(
            "_id", ASCENDING
        )
        return [doc async for doc in cursor]

    async def delete_for(self, kind: str, subject_ids: Sequence[ObjectId]) -> int:
        result = await self.collection.delete_many(
            {"kind": kind, "subjectId": {"$in": list(subject_ids)}}
        )
        return result.deleted_count

    async def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys((PENDING, DELIVERED, FAILED), 0)
        async for row in await self.collection.aggregate(
            [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        ):
            counts[row["_id"]] = row["n"]
        return counts


def delivery_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A delivery as `GET /jobs/{id}/deliveries` shows it: the target's host only (a Slack
    URL's path is its secret)."""
    from service.jobs.notify import redact
    from service.jobs.record import iso

    def when(value: Any) -> str | None:
        return iso(value) if isinstance(value, datetime) else None

    return {
        "deliveryId": doc["deliveryId"], "event": doc["event"], "source": doc["source"],
        "target": redact(doc["url"]), "format": doc["format"], "state": doc["state"],
        "attempts": doc.get("attempts", 0), "lastStatus": doc.get("lastStatus"),
        "lastError": doc.get("lastError"), "createdAt": when(doc.get("createdAt")),
        "updatedAt": when(doc.get("updatedAt")), "deliveredAt": when(doc.get("deliveredAt")),
    }  # fmt: skip
