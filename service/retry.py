"""The one retry policy: capped exponential backoff with jitter, on top of PyMongo's own
single retry of reads and writes.

Every loop that tries again after an error takes its delays from a `Backoff`: the one-shot
operations call `retry()` (a claim's read-back, a log batch, a final write, a cancel whose
reply was lost), and the loops that live on (the claimer, a client's reconnecting
WebSocket, the sweeps' tidier) count their consecutive failures in a `Failures`. Jitter
keeps the workers of a fleet, and the clients of an API, from retrying in step after an
election or a restart; the cap keeps a recovered database from waiting on a long sleep.

No PyMongo at import: the asyncio client (service.client) uses this module too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """`initial_s`, then times `factor` each try, capped at `max_s`; each delay is scaled by
    a uniform factor in [1 - jitter, 1 + jitter]."""

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """An endless schedule; start a new one after a success."""
        delay = self.initial_s
        while True:
            yield delay * random.uniform(1 - self.jitter, 1 + self.jitter)
            delay = min(delay * self.factor, self.max_s)


# Database writes of a run: fast first retries (a blip), then every ~2 s.
DATABASE = Backoff(initial_s=0.1, max_s=2.0)
# Streams and sweeps that wait for a database to come back: up to 5 s apart.
RECONNECT = Backoff(initial_s=0.1, max_s=5.0)


# Tries after an error in this process, by operation (`retry(operation=...)`,
# `Failures(operation=...)`): `/metrics`' and the workers' `gatequeue_retries_total`.
RETRIES: Counter[str] = Counter()


class Failures:
    """The failures in a row of a loop that lives on: `failed()` counts one and says how long
    to wait before the next try; `exhausted` says to give up instead (more than `attempts`
    in a row); `reset()`, after a success, starts the schedule over."""

    def __init__(
        self, policy: Backoff = DATABASE, *, attempts: int | None = None, operation: str = "other"
    ) -> None:
        self.policy = policy
        self.operation = operation
        self.attempts = attempts
        self.count = 0
        self._delays = policy.delays()

    def failed(self) -> float:
        self.count += 1
        RETRIES[self.operation] += 1
        return next(self._delays)

    def resume(self, count: int) -> None:
        """Go on from `count` failures another process counted (their delays skipped)."""
        for _ in range(count):
            self.count += 1
            next(self._delays)

    @property
    def exhausted(self) -> bool:
        return self.attempts is not None and self.count > self.attempts

    def reset(self) -> None:
        self.count = 0
        self._delays = self.policy.delays()


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: Backoff = DATABASE,
    retry_on: tuple[type[BaseException], ...] | None = None,
    retry_if: Callable[[BaseException], bool] | None = None,
    attempts: int | None = None,
    deadline: float | Callable[[], float] | None = None,
    on_error: Callable[[BaseException, float], None] | None = None,
    operation: str = "other",
) -> T:
    """`await op()` until it returns; after a `retry_on` error (default: any PyMongoError)
    for which `retry_if` holds (default: always), sleep and try again.

    Gives up (re-raising the last error) after `attempts` tries, or when the next try would
    start after `deadline` (a `time.monotonic()` value: a lease's end, say; or a function
    giving it, read after each error, for a deadline that moves: a lease renewed meanwhile,
    so an outage that a renewal outlived is still retried). `on_error` sees
    each error that is retried and the delay before the next try. `operation` names what
    is retried in `RETRIES` (the retries metric).
    """
    if retry_on is None:
        from pymongo.errors import PyMongoError

        retry_on = (PyMongoError,)
    delays = policy.delays()
    tries = 0
    while True:
        tries += 1
        try:
            return await op()
        except retry_on as exc:
            if retry_if is not None and not retry_if(exc):
                raise
            delay = next(delays)
            if attempts is not None and tries >= attempts:
                raise
            if deadline is not None:
                end = deadline() if callable(deadline) else deadline
                if time.monotonic() + delay >= end:
                    raise
            RETRIES[operation] += 1
            if on_error is not None:
                on_error(exc, delay)
            await asyncio.sleep(delay)
