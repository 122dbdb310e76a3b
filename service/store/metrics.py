"""The `job_metrics` collection: one document per epoch of a job (docs/design.md, "Logs and
metrics"): `{jobId, epoch, epochs, <key>: <number>..., ts}`."""

from __future__ import annotations

import builtins
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from service.jobs.record import iso, utcnow


def metrics_json(doc: dict[str, Any]) -> dict[str, Any]:
    """An epoch's row without its ids: `{epoch, epochs, <key>: number..., ts}`."""
    out = {k: v for k, v in doc.items() if k not in ("_id", "jobId")}
    if out.get("ts") is not None:
        out["ts"] = iso(out["ts"])
    return out


class MetricStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index(
            [("jobId", ASCENDING), ("epoch", ASCENDING)], unique=True
        )

    async def write(
        self, job_id: ObjectId, epoch: int, epochs: int, values: dict[str, float]
    ) -> None:
        """One document per epoch; an upsert so a retried write never makes two."""
        await self.collection.update_one(
            {"jobId": job_id, "epoch": epoch},
            {"$set": {"epochs": epochs, **values, "ts": utcnow()}},
            upsert=True,
        )

    async def delete_for(self, job_ids: list[ObjectId]) -> int:
        return (await self.collection.delete_many({"jobId": {"$in": job_ids}})).deleted_count

    async def list(self, job_id: ObjectId) -> list[dict[str, Any]]:
        cursor = self.collection.find({"jobId": job_id}, {"_id": 0}).sort("epoch", ASCENDING)
        return await cursor.to_list(length=None)

    async def values(self, job_ids: builtins.list[ObjectId], metric: str, *, up_to: int
                     ) -> dict[ObjectId, dict[int, float]]:  # fmt: skip
        """{job: {epoch: value}} of `metric` for epochs <= `up_to` (a scheduler's view)."""
        cursor = self.collection.find(
            {"jobId": {"$in": job_ids}, "epoch": {"$lte": up_to}, metric: {"$exists": True}},
            {"_id": 0, "jobId": 1, "epoch": 1, metric: 1},
        )
        out: dict[ObjectId, dict[int, float]] = {}
        async for doc in cursor:
            value = doc.get(metric)
            if isinstance(value, int | float):
                out.setdefault(doc["jobId"], {})[int(doc["epoch"])] = float(value)
        return out
