"""The one retry policy: capped exponential backoff with jitter, on top of PyMongo's own
single retry of reads and writes.

Every loop that tries again after an error (a change stream re-opening, a log batch, a
metrics write, a claim, a lease renewal) takes its delays from a `Backoff`, and the
one-shot ones call `retry()`. Jitter keeps the workers of a fleet from retrying in step
after an election; the cap keeps a recovered database from waiting on a long sleep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pymongo.errors import PyMongoError

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


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: Backoff = DATABASE,
    retry_on: tuple[type[BaseException], ...] = (PyMongoError,),
    attempts: int | None = None,
    deadline: float | None = None,
    on_error: Callable[[BaseException, float], None] | None = None,
) -> T:
    """`await op()` until it returns; after a `retry_on` error, sleep and try again.

    Gives up (re-raising the last error) after `attempts` tries, or when the next try would
    start after `deadline` (a `time.monotonic()` value: a lease's end, say). `on_error` sees
    each error and the delay before the next try.
    """
    delays = policy.delays()
    tries = 0
    while True:
        tries += 1
        try:
            return await op()
        except retry_on as exc:
            delay = next(delays)
            if attempts is not None and tries >= attempts:
                raise
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            if on_error is not None:
                on_error(exc, delay)
            await asyncio.sleep(delay)
