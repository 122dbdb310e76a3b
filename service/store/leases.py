"""`leases`: one document per task that one API replica at a time may do (retention), held
by a replica until `expiresAt` on the server's clock, so replicas with skewed clocks agree."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


class LeaseStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        """Nothing beyond `_id`: one small document per task."""

    async def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or extend) the lease `name` for `holder` unless another holds it unexpired."""
        try:  # the document exists from the first try on (a lost race is as good)
            await self.collection.update_one(
                {"_id": name},
                {"$setOnInsert": {"holder": None, "expiresAt": _NEVER}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass
        taken = await self.collection.find_one_and_update(
            {
                "_id": name,
                "$expr": {"$or": [{"$eq": ["$holder", holder]}, {"$lt": ["$expiresAt", "$$NOW"]}]},
            },
            [{"$set": {"holder": holder, "expiresAt": {"$add": ["$$NOW", int(ttl_s * 1000)]}}}],
            return_document=ReturnDocument.AFTER,
        )
        return taken is not None

    async def release(self, name: str, holder: str) -> None:
        await self.collection.update_one(
            {"_id": name, "holder": holder}, {"$set": {"holder": None, "expiresAt": _NEVER}}
        )

    async def holder(self, name: str) -> str | None:
        doc = await self.collection.find_one({"_id": name})
        return None if doc is None else doc.get("holder")
