"""Where a Pending job stands: how many jobs a free slot takes before it, and what it waits
for (docs/sweeps.md, "Priorities and order"). Computed when a job is read, never stored: a
stored position would be stale the moment any other job moved."""

from __future__ import annotations

from service.jobs import memory
from service.jobs.record import Job, JobRecord
from service.store.jobs import JobStore
from service.store.sweeps import SweepStore
from service.store.workers import WorkerStore

FREE_SLOT = "a free slot"
SWEEP_CAP = "maxParallel of its sweep"
MEMORY = "a worker with enough memory"


class QueueView:
    def __init__(self, jobs: JobStore, sweeps: SweepStore, workers: WorkerStore) -> None:
        self.jobs = jobs
        self.sweeps = sweeps
        self.workers = workers

    async def waiting_for(self, job: JobRecord) -> str:
        if job.sweepId is not None and job.sweepMaxParallel is not None:
            if await self.sweeps.reserved(job.sweepId) >= job.sweepMaxParallel:
                return SWEEP_CAP
        slots = await self.workers.live_slots()
        if slots and not any(memory.fits(job.memoryEstimate, s.device, s.memory_bytes)
                             for s in slots):  # fmt: skip
            return MEMORY
        return FREE_SLOT

    async def explain(self, job: Job) -> Job:
        """The job with `queuePosition` and `waitingFor` filled in."""
        return job.model_copy(
            update={
                "queuePosition": await self.jobs.queue_position(job),
                "waitingFor": await self.waiting_for(job),
            }
        )
