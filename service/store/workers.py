"""The `workers` collection: each worker's slots and what each can hold, so the API can
refuse a job no worker could ever fit (docs/design.md, "memory").

A worker writes its document when it starts and refreshes `heartbeatAt` (the server's
clock) while it runs; it removes it when it stops cleanly. A worker that died leaves its
document behind, so only workers seen within `LIVE_WITHIN_S` count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

HEARTBEAT_S = 30.0
LIVE_WITHIN_S = 10 * HEARTBEAT_S


@dataclass(frozen=True)
class SlotCapacity:
    worker_id: str
    gpu: str
    memory_bytes: int | None  # None: the worker could not tell

    @property
    def device(self) -> str:
        return "cpu" if self.gpu == "cpu" else "cuda"


class WorkerStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def register(self, worker_id: str, host: str, slots: list[dict[str, Any]]) -> None:
        """`slots`: `[{gpu, memoryBytes}]`; refreshes the document of a restarted worker."""
        await self.collection.update_one(
            {"_id": worker_id},
            [{"$set": {"host": {"$literal": host}, "slots": {"$literal": slots},
                       "heartbeatAt": "$$NOW"}}],
            upsert=True,
        )  # fmt: skip

    async def heartbeat(self, worker_id: str) -> None:
        await self.collection.update_one(
            {"_id": worker_id}, {"$currentDate": {"heartbeatAt": True}}
        )

    async def remove(self, worker_id: str) -> None:
        await self.collection.delete_one({"_id": worker_id})

    async def live_slots(self, within_s: float = LIVE_WITHIN_S) -> list[SlotCapacity]:
        """Every slot of the workers seen in the last `within_s` seconds (server clock)."""
        cursor = self.collection.find(
            {"$expr": {"$gte": ["$heartbeatAt", {"$subtract": ["$$NOW", round(within_s * 1000)]}]}}
        )
        out = []
        async for doc in cursor:
            for slot in doc.get("slots") or []:
                out.append(SlotCapacity(doc["_id"], str(slot.get("gpu")), slot.get("memoryBytes")))
        return out
