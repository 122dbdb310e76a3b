"""One resumable change stream, used by the worker's dispatch and by the API's fan-out.

It keeps a stream open until cancelled: after an error it re-opens from the last resume
token (with the retry policy's backoff), and when the server says the token is dead it
starts afresh and says so (`on_open(resumed=False)`), so the consumer re-reads what it may
have missed (the worker: its catch-up query; the fan-out: a resync of every subscriber).
The rules are the same for both consumers:

- a token is dead on error codes 260 (InvalidResumeToken), 280 (ChangeStreamFatalError),
  286 (ChangeStreamHistoryLost) or an error carrying the `NonResumableChangeStreamError`
  label; any other error keeps the token and re-opens from it;
- an `invalidate` event (the collection or database was dropped) ends the stream for good:
  the token is dropped and a fresh stream is opened (every consumer's pipeline lets
  `invalidate` through its `$match`, so it is seen); a stream that ends otherwise (closed
  under us) re-opens from its token;
- the token advances with every batch, events or not: the post-batch resume token of an
  empty getMore moves past writes that matched no filter, so a restart never rescans hours
  of unrelated writes. Where tokens are stored, an advance without an event is written at
  most every `idle_save_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure, PyMongoError

from service.retry import RECONNECT, Backoff, Failures
from service.store.offsets import OffsetStore

log = structlog.get_logger(__name__)

DEAD_TOKEN_CODES = frozenset({260, 280, 286})
DEAD_TOKEN_LABEL = "NonResumableChangeStreamError"
# A stream that stayed open this long was healthy: its next failure re-opens at once.
HEALTHY_S = 1.0

Opener = Callable[[Any | None], Awaitable[AsyncChangeStream[Any]]]
ChangeHandler = Callable[[Mapping[str, Any]], Awaitable[None]]
OpenHandler = Callable[[bool], Awaitable[None]]


def token_is_dead(exc: PyMongoError) -> bool:
    return isinstance(exc, OperationFailure) and (
        exc.code in DEAD_TOKEN_CODES or exc.has_error_label(DEAD_TOKEN_LABEL)
    )


class TokenStore(Protocol):
    """Where a stream keeps its resume token between openings."""

    async def load(self) -> Any | None: ...

    def advance(self, token: Any, *, event: bool) -> None: ...

    async def clear(self) -> None: ...

    async def flush(self) -> None: ...


class MemoryTokens:
    """For a process that only needs to survive a dropped stream (the API's fan-out): a
    restarted API has no subscribers left to serve a backlog to."""

    def __init__(self) -> None:
        self.token: Any | None = None

    async def load(self) -> Any | None:
        return self.token

    def advance(self, token: Any, *, event: bool) -> None:
        self.token = token

    async def clear(self) -> None:
        self.token = None

    async def flush(self) -> None:
        return None


class StoredTokens:
    """Tokens in `stream_offsets` under `name`, written in the background: one write in
    flight at a time, always of the newest token, so a burst of events costs a few writes
    and the next event is never held up. A crash before a write lands only replays events,
    and replayed events are harmless to a consumer that treats them as hints.
    """

    def __init__(self, offsets: OffsetStore, name: str, *, idle_save_s: float = 10.0) -> None:
        self._offsets = offsets
        self.name = name
        self.idle_save_s = idle_save_s
        self._next: Any | None = None
        self._last_saved: Any | None = None
        self._saved_at = float("-inf")
        self._saver: asyncio.Task[None] | None = None
        self.recording = True

    async def load(self) -> Any | None:
        token = await self._offsets.load(self.name)
        self._last_saved = token
        return token

    def stop_recording(self) -> None:
        """Store no newer token from here on (see Worker._begin_stopping)."""
        self.recording = False

    def advance(self, token: Any, *, event: bool) -> None:
        if not self.recording or token is None or token == self._last_saved:
            return
        if not event and time.monotonic() - self._saved_at < self.idle_save_s:
            return
        self._next = token
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save(), name=f"tokens-{self.name}")

    async def _save(self) -> None:
        while self._next is not None:
            token, self._next = self._next, None
            try:
                await self._offsets.save(self.name, token)
            except PyMongoError as exc:
                log.warning("could not store the resume token", name=self.name, error=str(exc))
                return
            self._last_saved, self._saved_at = token, time.monotonic()

    async def clear(self) -> None:
        self._next = self._last_saved = None
        await self._offsets.clear(self.name)

    async def flush(self) -> None:
        """Until the newest advanced token is stored (shutdown, tests)."""
        while self._saver is not None and not self._saver.done():
            await asyncio.shield(self._saver)


class ResumableChangeStream:
    """`run(on_change, on_open)` until cancelled. Observable state is for logs and tests."""

    def __init__(
        self,
        name: str,
        opener: Opener,
        tokens: TokenStore,
        *,
        backoff: Backoff = RECONNECT,
    ) -> None:
        self.name = name
        self._open = opener
        self.tokens = tokens
        self._backoff = backoff
        self.stream: AsyncChangeStream[Any] | None = None
        self.opens = 0
        self.events = 0
        self.resumed_from_token = False
        self.token_fallbacks = 0
        self.invalidations = 0
        self.opened = asyncio.Event()
        self._opened_count = asyncio.Condition()

    @property
    def cursor_id(self) -> int | None:
        """The server-side cursor of the open stream (what `killCursors` takes)."""
        stream = self.stream
        return None if stream is None else stream._cursor.cursor_id

    async def wait_opened(self, count: int) -> None:
        """Until the stream has been opened `count` times in all (tests)."""
        async with self._opened_count:
            await self._opened_count.wait_for(lambda: self.opens >= count)

    async def run(self, on_change: ChangeHandler, on_open: OpenHandler) -> None:
        failures = Failures(self._backoff, operation="change_stream")
        while True:
            opened_at: float | None = None
            try:
                stream, resumed = await self._open_stream()
                async with stream:
                    self.stream = stream
                    opened_at = time.monotonic()
                    await self._note_open(resumed)
                    await on_open(resumed)
                    invalidated = await self._follow(stream, on_change)
                if invalidated:
                    await self._invalidated()
                failures.reset()  # re-open at once
                continue
            except PyMongoError as exc:
                if token_is_dead(exc):
                    await self._drop_token(exc)
                # A stream that worked for a while is re-opened at once; one that keeps
                # failing backs off, so a down server is not hammered.
                if opened_at is not None and time.monotonic() - opened_at > HEALTHY_S:
                    failures.reset()
                    delay = 0.0
                else:
                    delay = failures.failed()
                log.warning("change stream lost; re-opening", stream=self.name, error=str(exc),
                            in_s=round(delay, 2))  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self.stream = None
                self.opened.clear()

    async def _open_stream(self) -> tuple[AsyncChangeStream[Any], bool]:
        """From the stored token where the server still accepts it, else afresh."""
        token = await self.tokens.load()
        if token is not None:
            try:
                return await self._open(token), True
            except PyMongoError as exc:
                if not token_is_dead(exc):
                    raise
                await self._drop_token(exc)
        return await self._open(None), False

    async def _follow(self, stream: AsyncChangeStream[Any], on_change: ChangeHandler) -> bool:
        """Until the stream ends; True if it ended with an `invalidate` event."""
        while stream.alive:
            change = await stream.try_next()
            if change is None:  # an empty batch; its post-batch token moved on
                self.tokens.advance(stream.resume_token, event=False)
                continue
            if change.get("operationType") == "invalidate":
                return True
            self.events += 1
            await on_change(change)
            self.tokens.advance(stream.resume_token, event=True)
        return False

    async def _invalidated(self) -> None:
        self.invalidations += 1
        log.warning("change stream invalidated; starting afresh", stream=self.name)
        await self.tokens.clear()

    async def _note_open(self, resumed: bool) -> None:
        self.opens += 1
        self.resumed_from_token = resumed
        self.opened.set()
        async with self._opened_count:
            self._opened_count.notify_all()
        log.info("change stream open", stream=self.name, resumed_from_token=resumed)

    async def _drop_token(self, exc: PyMongoError) -> None:
        """Expired (history lost) or foreign token: forget it; the consumer catches up."""
        log.warning("resume token unusable; starting afresh", stream=self.name,
                    code=getattr(exc, "code", None), error=str(exc))  # fmt: skip
        self.token_fallbacks += 1
        try:
            await self.tokens.clear()
        except PyMongoError:
            pass  # the next load may find it again and drop it again
