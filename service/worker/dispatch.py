"""The worker's view of the queue: a change stream on `jobs`, resumable across restarts.

Each worker follows the stream on its own and stores its own resume token under its own
name in `stream_offsets`: a shared token would let one worker's progress skip events another
has not seen. The stream is a wake-up signal with the job attached, not the source of truth:
every time it is (re)opened the worker also catches up from a query of Pending jobs, so an
event lost in any way (a cut, an expired token, a crash between handling and saving) costs
latency, never a job.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure, PyMongoError

from service.jobstatus import Status
from service.store import Store

log = structlog.get_logger(__name__)

ChangeHandler = Callable[[dict[str, Any]], Awaitable[None]]
OpenHandler = Callable[[bool], Awaitable[None]]

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0
_HEALTHY_S = 1.0


def offset_name(worker_id: str) -> str:
    return f"worker:{worker_id}"


def pipeline(worker_id: str) -> list[dict[str, Any]]:
    """Only what a worker acts on: a job that is (again) Pending, or a cancel of its own run.

    Filtering on `fullDocument` works with `updateLookup` on real MongoDB; lease renewals
    and metric updates of other workers' runs never reach this worker.
    """
    return [
        {
            "$match": {
                "operationType": {"$in": ["insert", "update", "replace"]},
                "$or": [
                    {"fullDocument.status": Status.PENDING.value},
                    {
                        "fullDocument.status": Status.RUNNING.value,
                        "fullDocument.cancelRequested": True,
                        "fullDocument.worker.id": worker_id,
                    },
                ],
            }
        }
    ]


class JobFeed:
    """Runs until cancelled, re-opening the stream after any error with a capped backoff."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        on_change: ChangeHandler,
        on_open: OpenHandler,
        max_await_ms: int = 1000,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self.offset_name = offset_name(worker_id)
        self._on_change = on_change
        self._on_open = on_open
        self._max_await_ms = max_await_ms
        self._stream: AsyncChangeStream[Any] | None = None
        self._token: Any | None = None
        self._saver: asyncio.Task[None] | None = None
        self._recording = True
        # Observable state, for logs, tests and the benchmark.
        self.opens = 0
        self.resumed_from_token = False
        self.token_fallbacks = 0
        self.events = 0
        self.opened = asyncio.Event()

    @property
    def cursor_id(self) -> int | None:
        """The server-side cursor of the open stream (what `killCursors` takes)."""
        stream = self._stream
        if stream is None:
            return None
        return stream._cursor.cursor_id

    async def run(self) -> None:
        backoff = _BACKOFF_START_S
        while True:
            resumed, handled, opened_at = False, 0, None
            try:
                stream, resumed = await self._open()
                async with stream:
                    self._stream = stream
                    opened_at = time.monotonic()
                    self.opens += 1
                    self.resumed_from_token = resumed
                    self.opened.set()
                    await self._on_open(resumed)
                    async for change in stream:
                        await self._on_change(change)
                        self.events += 1
                        handled += 1
                        if self._recording:
                            self._save_later(change["_id"])
            except PyMongoError as exc:
                # The driver already resumed once on its own where the error allowed it.
                if resumed and handled == 0 and isinstance(exc, OperationFailure):
                    await self._drop_token(exc)
                # A stream that worked for a while is re-opened at once; one that keeps
                # failing backs off, so a down server is not hammered.
                if opened_at is not None and time.monotonic() - opened_at > _HEALTHY_S:
                    backoff = _BACKOFF_START_S
                    delay = 0.0
                else:
                    delay = backoff * random.uniform(0.8, 1.2)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                log.warning("change stream lost; re-opening", error=str(exc), in_s=round(delay, 2))
                await asyncio.sleep(delay)
            finally:
                self._stream = None
                self.opened.clear()

    def stop_recording(self) -> None:
        """Keep delivering events but store no newer token: from here on the worker is
        shutting down and claims nothing, so a job inserted now must be replayed to whoever
        starts under this name next, not recorded as handled by a worker about to leave."""
        self._recording = False

    def _save_later(self, token: Any) -> None:
        """Store the newest token without holding up the next event: one write in flight at
        a time, always of the latest token, so a burst of events costs a few writes. A crash
        before a write lands only replays those events, and replayed events are harmless."""
        self._token = token
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_tokens())

    async def _save_tokens(self) -> None:
        while self._token is not None:
            token, self._token = self._token, None
            try:
                await self._store.save_offset(self.offset_name, token)
            except PyMongoError as exc:
                log.warning("could not store the resume token", error=str(exc))
                return

    async def flush_token(self) -> None:
        """Wait until the newest handled event's token is stored (for shutdown and tests)."""
        while self._saver is not None and not self._saver.done():
            await asyncio.shield(self._saver)

    async def _open(self) -> tuple[AsyncChangeStream[Any], bool]:
        """Resume from the stored token when there is one that the server still accepts."""
        token = await self._store.load_offset(self.offset_name)
        if token is not None:
            try:
                return await self._watch(token), True
            except OperationFailure as exc:
                await self._drop_token(exc)
        return await self._watch(None), False

    async def _watch(self, token: Any | None) -> AsyncChangeStream[Any]:
        return await self._store.jobs.watch(
            pipeline(self._worker_id),
            full_document="updateLookup",
            resume_after=token,
            max_await_time_ms=self._max_await_ms,
        )

    async def _drop_token(self, exc: OperationFailure) -> None:
        """Expired (history lost) or foreign token: forget it; the catch-up covers the gap."""
        log.warning(
            "stored resume token unusable; catching up from the queue instead",
            code=exc.code,
            error=str(exc),
        )
        self.token_fallbacks += 1
        await self._store.clear_offset(self.offset_name)
