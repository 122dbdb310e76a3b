"""Removing jobs and everything stored for them: their records, log batches, metrics, and
the files of every bucket (chunks included). Used by `DELETE /jobs/{id}`, `DELETE
/sweeps/{id}` and retention (service.jobs.retention); docs/design.md, "Deleting and
retention"."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bson import ObjectId

from service.store.deliveries import DeliveryStore
from service.store.files import BUCKETS, FileStore
from service.store.jobs import JobStore
from service.store.logs import LogStore
from service.store.metrics import MetricStore


@dataclass
class Removed:
    """What one removal deleted, counted by MongoDB (each item is counted by the one delete
    that removed it, however many replicas try)."""

    jobs: int = 0
    logBatches: int = 0  # the API's JSON names
    metrics: int = 0
    files: int = 0
    orphans: int = 0  # files no record names, and chunks of files never finished

    def __add__(self, other: Removed) -> Removed:
        return Removed(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def to_json(self) -> dict[str, int]:
        """The counts; `orphans` (retention's alone: a removal by id never has any) only
        where some were removed, so `DELETE`'s answer keeps its four counts."""
        out = asdict(self)
        if not out["orphans"]:
            del out["orphans"]
        return out

    @property
    def anything(self) -> bool:
        return any(asdict(self).values())


class Removal:
    def __init__(
        self,
        jobs: JobStore,
        logs: LogStore,
        metrics: MetricStore,
        files: FileStore,
        deliveries: DeliveryStore,
    ) -> None:
        self._deliveries = deliveries
        self._jobs = jobs
        self._logs = logs
        self._metrics = metrics
        self._files = files

    async def jobs(self, job_ids: list[ObjectId]) -> Removed:
        """The jobs and all they stored. What they stored goes first and the records last, so
        a removal cut short leaves the jobs, and deleting them again finishes it; then what
        they stored is swept once more: a worker still writing for one (a Running job whose
        cancel was just requested) had its writes refused from the moment its record went,
        but may have written just before."""
        if not job_ids:
            return Removed()
        removed = await self.data(job_ids)
        await self._deliveries.delete_for("job", job_ids)  # their webhooks' records
        removed.jobs = await self._jobs.delete_ids(job_ids)
        return removed + await self.data(job_ids)

    async def data(self, job_ids: list[ObjectId]) -> Removed:
        files = 0
        for bucket in BUCKETS:
            files += await self._files.delete_for(bucket, job_ids)
        return Removed(
            logBatches=await self._logs.delete_for(job_ids),
            metrics=await self._metrics.delete_for(job_ids),
            files=files,
        )

    async def logs(self, job_ids: list[ObjectId]) -> Removed:
        """Only the logs (retention of old finished jobs); the jobs remember it."""
        if not job_ids:
            return Removed()
        batches = await self._logs.delete_for(job_ids)
        await self._jobs.mark_logs_removed(job_ids)
        return Removed(logBatches=batches)
