"""One read in flight at a time, shared by everyone who asks while it runs.

The API keeps a few values read from MongoDB now and then (a token's Pending count, the
live workers' slots). Under load every request finds the value stale at the same moment:
each reading it for itself once meant 64 concurrent identical queries, and, where callers
then updated what they read, lost updates. `Coalesced` gives them one read and its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        """The result of the read in flight, or of a new one; its exception if it fails
        (the next call reads again). A cancelled caller leaves the read to the others."""
        if self._running is None:
            running = asyncio.ensure_future(self._fetch())
            self._running = running
            running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, done: asyncio.Future[T]) -> None:
        if self._running is done:
            self._running = None
        if not done.cancelled():
            done.exception()  # retrieved: its waiters have it, or none is left to care
