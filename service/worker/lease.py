"""A run's hold on its job: the lease, renewed until the run's final write.

The attempt holds the job while its renewals find the job Running with its attempt id. The
moment one finds otherwise (the lease expired and the job was re-queued or failed), the
lease is lost: the run is stopped and nothing more is written for it, because the job
belongs to whoever holds it now. A renewal that fails (MongoDB unreachable, reply lost) is
retried, with the run going on, for as long as the lease surely holds: until `deadline`,
the send time of the last renewal that succeeded plus the lease, on this machine's monotonic
clock (docs/reliability.md, "Leases"). Renewals and the final write go through here one at
a time, so a renewal never races the final write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from pymongo.errors import PyMongoError

from service.jobs.record import JobRecord
from service.retry import DATABASE, Failures, retry
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
        on_renewed: Callable[[float], None] | None = None,
        claimed_at: float | None = None,
    ) -> None:
        self._jobs = jobs
        self.job = job  # the latest version we own
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self._on_lost = on_lost
        self._on_cancel_requested = on_cancel_requested
        self._on_renewed = on_renewed
        # Counted from when the claim was sent, on our own clock: the server granted the lease
        # after that, so it surely holds until then.
        self.deadline = (claimed_at if claimed_at is not None else time.monotonic()) + lease_s
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
        failures = Failures(DATABASE, operation="lease_renewal")
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
                    delay = min(failures.failed(), self.renew_every_s)
                    continue
                if renewed is None:
                    self.lose("the job is not ours any more (lease renewal refused)")
                    return
                self.job = renewed
                failures.reset()
                self.deadline = sent_at + self.lease_s
                delay = self.renew_every_s
                if self._on_renewed is not None:
                    self._on_renewed(self.deadline)
            if renewed.cancelRequested:
                self._on_cancel_requested()

    async def final_write(self, write: FinalWrite) -> JobRecord | None:
        """The run's last write (finish or release); `None` when the job is not ours any more.
        Retried while the lease surely holds; the write is conditioned on the attempt id, and
        the store recognises its own earlier write whose reply was lost."""
        async with self._cas:
            self._done = True
            if self.lost:
                return None
            job = self.job
            try:
                result = await retry(
                    lambda: write(job), deadline=self.deadline, operation="final_write"
                )
            except PyMongoError as exc:
                log.error("final write failed; the lease will expire",
                          job_id=str(job.id), error=str(exc))  # fmt: skip
                return None
            if result is None:
                log.warning("the job changed hands before its final write",
                            job_id=str(job.id))  # fmt: skip
            else:
                self.job = result
            return result
