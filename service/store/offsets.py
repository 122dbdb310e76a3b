"""The `stream_offsets` collection: change-stream resume tokens stored under a name, so a
worker that restarts under the same id resumes where it stopped."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from service.jobs.record import utcnow


class OffsetStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def load(self, name: str) -> Any | None:
        doc = await self.collection.find_one({"_id": name})
        return None if doc is None else doc.get("token")

    async def save(self, name: str, token: Any) -> None:
        await self.collection.update_one(
            {"_id": name}, {"$set": {"token": token, "updatedAt": utcnow()}}, upsert=True
        )

    async def clear(self, name: str) -> None:
        await self.collection.delete_one({"_id": name})
