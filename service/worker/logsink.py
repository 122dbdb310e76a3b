"""A job attempt's log writer: lines in read order, batched into `job_logs`.

One sink per attempt is the only writer of that attempt's lines, so it keeps the `seq`
counter itself and pays no read per batch. Lines are kept in the order they were read from
both pipes; a flush cuts that sequence into single-stream batches, so interleaving survives
(docs/design.md: each batch has one `stream`). A flush happens at `max_lines` (or `max_bytes`)
buffered, or `max_delay_s` after the oldest unwritten line, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import structlog
from bson import ObjectId
from pymongo.errors import PyMongoError

from service.cancellation import cancel_and_wait
from service.retry import DATABASE
from service.store.errors import StaleAttempt
from service.store.logs import LogStore
from service.worker.errors import LeaseLapsed

log = structlog.get_logger(__name__)

MAX_LINES = 500
MAX_BYTES = 1 << 20
MAX_DELAY_S = 0.1
# Past this many unwritten lines the pipe readers wait, so the trainer blocks on its own
# writes instead of the worker buffering without bound while MongoDB is slow.
HIGH_WATER_LINES = 4 * MAX_LINES
# Tries of one batch before a sink that holds no lease gives up (about 6 s of outage); a
# run's sink tries for as long as its lease surely holds.
APPEND_ATTEMPTS = 6


class LogSink:
    def __init__(
        self,
        logs: LogStore,
        job_id: ObjectId,
        *,
        next_seq: int,
        attempt_id: str | None = None,
        lease_deadline: Callable[[], float] | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
        max_delay_s: float = MAX_DELAY_S,
        high_water_lines: int = HIGH_WATER_LINES,
    ) -> None:
        self._logs = logs
        self.job_id = job_id
        self.attempt_id = attempt_id
        self._lease_deadline = lease_deadline
        self.seq = next_seq  # where the next batch goes
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._max_delay_s = max_delay_s
        self._high_water = max(high_water_lines, max_lines)
        self._buf: list[tuple[str, str]] = []
        self._buf_bytes = 0
        self._oldest_at = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._discarded = False
        self.batches_written = 0
        self.failed = asyncio.Event()  # set when writing gave up: the run cannot be logged
        self.error: BaseException | None = None
        self.stale = False  # it gave up because the attempt does not hold the job (any more)
        self._task = asyncio.create_task(self._guarded_flusher(), name=f"logsink-{job_id}")

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def write(self, stream: str, line: str) -> None:
        """Queue one line; waits only when far behind (back-pressure onto the trainer)."""
        while len(self._buf) >= self._high_water and not self._discarded and not self.error:
            self._room.clear()
            await self._room.wait()
        if self._discarded or self.error is not None:
            return  # nowhere to write: keep draining the pipes, the supervisor stops the run
        if self._closing:
            raise RuntimeError("write to a closed log sink")
        if not self._buf:
            self._oldest_at = time.monotonic()
            self._wake.set()
        self._buf.append((stream, line))
        self._buf_bytes += len(line)
        if len(self._buf) >= self._max_lines or self._buf_bytes >= self._max_bytes:
            self._wake.set()

    async def system(self, line: str) -> None:
        await self.write("system", line)

    async def close(self) -> None:
        """Write everything still buffered, then stop. Raises if writing failed."""
        self._closing = True
        self._wake.set()
        await self._task
        if self.error is not None:
            raise self.error

    async def discard(self) -> None:
        """Drop what is buffered and stop writing at once (the attempt lost its lease)."""
        self._discarded = True
        self._buf.clear()
        self._room.set()
        await cancel_and_wait(self._task)  # it may be in an insert

    async def _guarded_flusher(self) -> None:
        try:
            await self._flusher()
        except (StaleAttempt, LeaseLapsed) as exc:
            log.warning("log writes stopped", job_id=str(self.job_id), why=str(exc))
            self.stale = True
            self._give_up(exc)
        except PyMongoError as exc:
            log.error("log writes keep failing; giving up", job_id=str(self.job_id), error=str(exc))
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        self.error = exc
        self._buf.clear()
        self._room.set()
        self.failed.set()

    async def _flusher(self) -> None:
        while True:
            if not self._buf:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            await self._wait_until_due()
            taken, self._buf, self._buf_bytes = self._buf, [], 0
            self._room.set()
            for stream, lines in _batches(taken, self._max_lines, self._max_bytes):
                await self._append(stream, lines)

    async def _wait_until_due(self) -> None:
        while not self._closing:
            if len(self._buf) >= self._max_lines or self._buf_bytes >= self._max_bytes:
                return
            remaining = self._oldest_at + self._max_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)

    def _check_lease(self) -> None:
        """A frozen or partitioned worker resumes with lines in its buffer: they are not
        written unless its lease still surely holds (the run's lease keeper decides)."""
        if self._lease_deadline is not None and time.monotonic() >= self._lease_deadline():
            raise LeaseLapsed("the lease was not confirmed by its deadline")

    async def _append(self, stream: str, lines: list[str]) -> None:
        """Store one batch exactly once, also across an error that hid whether it landed.

        A run's sink (one with a lease) tries for as long as the lease surely holds: an
        outage shorter than the lease costs nothing. Without one, APPEND_ATTEMPTS tries."""
        delays = DATABASE.delays()
        attempt = 0
        while True:
            attempt += 1
            self._check_lease()
            try:
                stored_at = await self._logs.append(
                    self.job_id, stream, lines, expected_seq=self.seq, attempt_id=self.attempt_id
                )
                self.seq = stored_at + len(lines)
                self.batches_written += 1
                return
            except PyMongoError as exc:
                if self._lease_deadline is None and attempt >= APPEND_ATTEMPTS:
                    raise
                log.warning("log write failed; retrying", job_id=str(self.job_id), error=str(exc))
                await asyncio.sleep(next(delays))
                with contextlib.suppress(PyMongoError):
                    landed = await self._logs.batch_at(self.job_id, self.seq)
                    if landed is not None and landed["lines"] == lines:
                        self.seq += len(lines)
                        self.batches_written += 1
                        return


def _batches(
    items: list[tuple[str, str]], max_lines: int, max_bytes: int
) -> Iterator[tuple[str, list[str]]]:
    """Consecutive runs of one stream, each cut at `max_lines` lines or `max_bytes`."""
    stream: str | None = None
    lines: list[str] = []
    size = 0
    for s, line in items:
        if lines and (s != stream or len(lines) >= max_lines or size + len(line) > max_bytes):
            yield stream, lines  # type: ignore[misc]
            lines, size = [], 0
        stream = s
        lines.append(line)
        size += len(line)
    if lines:
        yield stream, lines  # type: ignore[misc]
