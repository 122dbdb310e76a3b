"""A run's hold on its job: the lease, renewed by compare-and-set until the run's final write.

The attempt owns the job only while its renewals succeed. The moment one loses the race (the
lease expired and someone re-queued or failed the job), the lease is lost: the run is
stopped and nothing more is written for it, because the job belongs to whoever holds it now.
All version-changing writes of the run (renewals and the final write) go through here, one
at a time, so a renewal never races the final write for the same version.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from pymongo.errors import PyMongoError

from service.jobs.record import JobRecord
from service.retry import DATABASE
from service.store.jobs import JobStore

log = structlog.get_logger(__name__)

FinalWrite = Callable[[JobRecord], Awaitable[JobRecord | None]]


class Lease:
    def __init__(
        self,
        jobs: JobStore,
        job: JobRecord,
        *,
        lease_s: float,
        renew_every_s: float,
        on_lost: Callable[[str], None],
        on_cancel_requested: Callable[[], None],
    ) -> None:
        self._jobs = jobs
        self.job = job  # the latest version we own
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self._on_lost = on_lost
        self._on_cancel_requested = on_cancel_requested
        # Counted from before the claim's reply, on our own clock: our lease surely holds
        # until then, whatever the server's clock says.
        self.deadline = time.monotonic() + lease_s
        self.lost_reason: str | None = None
        self._cas = asyncio.Lock()
        self._done = False  # the final write was made (or given up): no more renewals

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def lose(self, why: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = why
            log.warning("job lost; stopping the run and writing nothing more",
                        job_id=str(self.job.id), why=why)  # fmt: skip
            self._on_lost(why)

    async def keep(self) -> None:
        """Renew every `renew_every_s`; faster retries while MongoDB errs. Returns once the
        lease is lost or the final write was made."""
        delay = self.renew_every_s
        while True:
            await asyncio.sleep(delay)
            async with self._cas:
                if self._done:
                    return
                sent_at = time.monotonic()
                try:
                    renewed = await self._jobs.renew_lease(self.job, self.lease_s)
                except PyMongoError as exc:
                    if time.monotonic() >= self.deadline:
                        self.lose(f"the lease could not be renewed in time: {exc}")
                        return
                    log.warning("lease renewal failed; retrying", job_id=str(self.job.id),
                                error=str(exc))  # fmt: skip
                    delay = min(DATABASE.initial_s * 10, self.renew_every_s)
                    continue
                if renewed is None:
                    self.lose("lease renewal lost the race")
                    return
                self.job = renewed
                self.deadline = sent_at + self.lease_s
                delay = self.renew_every_s
            if renewed.cancelRequested:
                self._on_cancel_requested()

    async def final_write(self, write: FinalWrite) -> JobRecord | None:
        """The run's last version-changing write (finish or release); `None` when the job
        is not ours any more. Retried while the lease surely holds."""
        async with self._cas:
            self._done = True
            if self.lost:
                return None
            delays = DATABASE.delays()
            while True:
                try:
                    result = await write(self.job)
                except PyMongoError as exc:
                    delay = next(delays)
                    if time.monotonic() + delay > self.deadline:
                        log.error("final write failed; the lease will expire",
                                  job_id=str(self.job.id), error=str(exc))  # fmt: skip
                        return None
                    await asyncio.sleep(delay)
                    continue
                if result is None:
                    log.warning("the job changed hands before its final write",
                                job_id=str(self.job.id))  # fmt: skip
                else:
                    self.job = result
                return result
