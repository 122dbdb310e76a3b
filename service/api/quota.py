"""Per-token submission limits (docs/security.md, "Rate limits and quotas").

Two limits, each answered with 429 and `Retry-After`:

- submissions per minute: a token bucket per token name, `GATEQUEUE_SUBMIT_RATE` deep,
  refilled at that rate; kept by each API process (with N replicas a token may submit up to
  N times the rate, which is what a per-process limit can promise without a shared counter).
  It is charged first (`charge`), before the body is read: every submission counts, the
  refused ones too, so a client cannot make the API check bad sweeps faster than the rate;
- Pending jobs at once: `GATEQUEUE_MAX_PENDING` per token, counted in MongoDB, so every
  replica sees the same count. The count is re-read at most once a second per token and
  this process's own submissions are added meanwhile: a quota of thousands does not cost a
  query per submission.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.api.errors import ApiError
from service.coalesce import Coalesced
from service.store.jobs import JobStore

RECOUNT_EVERY_S = 1.0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Pending:
    count: int
    at: float


class SubmissionQuota:
    def __init__(
        self,
        jobs: JobStore,
        *,
        rate_per_min: int,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jobs = jobs
        self.rate_per_min = rate_per_min
        self.max_pending = max_pending
        self._clock = clock
        self._buckets: dict[str | None, _Bucket] = {}
        self._pending: dict[str | None, _Pending] = {}
        self._recounts: dict[str | None, Coalesced[_Pending]] = {}

    def charge(self, name: str | None) -> None:
        """One submission by `name`, whatever becomes of it, or a 429 saying when to try
        again. Called before anything of the request is looked at."""
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(self.rate_per_min), now)
        per_s = self.rate_per_min / 60
        bucket.tokens = min(float(self.rate_per_min), bucket.tokens + (now - bucket.at) * per_s)
        bucket.at = now
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / per_s)
            raise ApiError(
                429,
                "rate_limited",
                f"{_who(name)} submitted more than {self.rate_per_min} jobs a minute; "
                f"try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        bucket.tokens -= 1

    async def admit(self, name: str | None, jobs: int = 1) -> None:
        """`jobs` new Pending jobs of `name` (a sweep's are many at once), or a 429 saying
        when to try again."""
        now = self._clock()
        pending = self._pending.get(name)
        if pending is None or now - pending.at >= RECOUNT_EVERY_S:
            pending = await self._recount(name)
        if pending.count + jobs > self.max_pending:
            adding = f" and asks for {jobs} more" if jobs > 1 else ""
            raise ApiError(
                429,
                "too_many_pending",
                f"{_who(name)} has {pending.count} jobs Pending{adding}, the most allowed at "
                f"once is {self.max_pending}; try again when some have started",
                headers={"Retry-After": "60"},
            )
        pending.count += jobs

    async def _recount(self, name: str | None) -> _Pending:
        """One count in MongoDB at a time per token, shared by the submissions that arrive
        while it runs (service.coalesce: each request counting for itself started 64 scans
        under load and then overwrote each other's additions, letting a flood past)."""
        recount = self._recounts.get(name)
        if recount is None:
            recount = self._recounts[name] = Coalesced(lambda: self._count(name))
        return await recount()

    async def _count(self, name: str | None) -> _Pending:
        at = self._clock()
        pending = self._pending[name] = _Pending(await self._jobs.pending_count(name), at)
        return pending


def _who(name: str | None) -> str:
    return f"token {name!r}" if name is not None else "this API's anonymous user"
