"""Retention (docs/design.md, "Deleting and retention"): Failed and Cancelled jobs that
finished more than `retain_failed_days` ago are removed whole (record, logs, metrics,
files); finished jobs older than `retain_logs_days` lose their logs. A Succeeded run's
record, metrics and files are never removed here: only `DELETE` removes them. Each pass
also removes stored files that nothing names once they are ORPHAN_AGE old: a data set's
files whose record never came, and the chunks of an upload killed before its end.

Every API replica runs the pass on a schedule, but one at a time: a pass holds the lease
document `retention` (service.store.leases), renewed between batches, so two replicas never
walk the same jobs; each item is counted by the one delete that removed it. A pass works in
batches of `batch` jobs with a pause between them, so the first pass over a large database
(years of jobs at once) never holds the event loop or MongoDB for long.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from bson import ObjectId

from service.jobs.status import Status
from service.store import Store
from service.store.files import BUCKETS
from service.store.removal import Removed

log = structlog.get_logger(__name__)

LEASE = "retention"
LEASE_S = 300.0  # a replica that died mid-pass is replaced after this long
BATCH = 200  # jobs per batch
PAUSE_S = 0.1  # between batches
EVERY_S = 3600.0  # between passes (jittered)
FIRST_AFTER_S = 60.0  # the first pass, once the API has settled after a start
# Stored files nothing names are removed once this old: a data set's files whose record
# never came, and the chunks of any bucket's file whose upload was killed before its end.
# An upload under way (or one retried until its lease lapses) is far younger.
ORPHAN_AGE = timedelta(days=1)
FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
REMOVED_WHOLE = (Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True)
class Policy:
    logs_days: float
    failed_days: float


def holder_name() -> str:
    """Unique per API process (and per app, several of which share a test process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Retention:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        holder: str | None = None,
        batch: int = BATCH,
        pause_s: float = PAUSE_S,
        on_removed: Callable[[str, Removed], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.holder = holder or holder_name()
        self.batch = batch
        self.pause_s = pause_s
        self._on_removed = on_removed  # (what, counts): metrics

    async def run_once(self, now: datetime | None = None) -> Removed | None:
        """One pass; None when another replica holds the lease (it is doing the pass)."""
        leases = self.store.leases
        if not await leases.acquire(LEASE, self.holder, LEASE_S):
            return None
        now = now or datetime.now(UTC)
        total = Removed()
        try:
            failed_cutoff = now - timedelta(days=self.policy.failed_days)
            logs_cutoff = now - timedelta(days=self.policy.logs_days)
            jobs = self.store.jobs
            total += await self._batches(
                "jobs",
                lambda: jobs.finished_before(REMOVED_WHOLE, failed_cutoff, self.batch),
                self.store.removal.jobs,
            )
            total += await self._batches(
                "logs",
                lambda: jobs.finished_before(FINAL, logs_cutoff, self.batch, logs_kept=True),
                self.store.removal.logs,
            )
            total += await self._orphans(now - ORPHAN_AGE)
        finally:
            await leases.release(LEASE, self.holder)
        if total.anything:
            log.info("retention removed", **total.to_json())
        return total

    async def _batches(
        self,
        what: str,
        find: Callable[[], Awaitable[list[ObjectId]]],
        remove: Callable[[list[ObjectId]], Awaitable[Removed]],
    ) -> Removed:
        total = Removed()
        while ids := await find():
            removed = await remove(ids)
            total += removed
            if self._on_removed is not None:
                self._on_removed(what, removed)
            await asyncio.sleep(self.pause_s)  # requests and other clients go first
            if not await self.store.leases.acquire(LEASE, self.holder, LEASE_S):
                log.warning("retention lease taken over; this pass stops")
                break
        return total

    async def _orphans(self, cutoff: datetime) -> Removed:
        """Stored files that nothing names, older than `cutoff` (ORPHAN_AGE)."""
        count = await self.store.datasets.remove_orphans(cutoff)
        for bucket in BUCKETS:
            count += await self.store.files.remove_partial(bucket, cutoff)
        removed = Removed(orphans=count)
        if count and self._on_removed is not None:
            self._on_removed("orphans", removed)
        return removed

    async def forever(self) -> None:
        """Pass after pass, `EVERY_S` apart (jittered); an error is logged, not fatal."""
        await asyncio.sleep(FIRST_AFTER_S * random.uniform(0.5, 1.5))
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # MongoDB unreachable: the next pass tries again
                log.warning("retention pass failed; trying again later", error=str(exc))
            await asyncio.sleep(EVERY_S * random.uniform(0.9, 1.1))
