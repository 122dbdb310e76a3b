"""One change stream per collection for the whole API process, fanned out to subscribers.

Every WebSocket client of the process shares two change streams: `job_logs` inserts and
`jobs` changes. Opening one stream per client would multiply MongoDB cursors (and
getMores) by the number of browsers watching, which is exactly what docs/design.md rules out.

Each subscriber gets its own bounded queue. Dispatch never waits for a subscriber: a
queue that overflows drops its subscriber (which the WebSocket layer turns into a close
with a reason), so one slow client can neither slow the others nor grow memory.

Consistency: a subscriber registers *before* it reads the store, so anything committed
after its store read reaches it live. When a stream has to be reopened without a resume
token (first start, or the server lost the token's history), events may have been missed,
so every subscriber is sent a `Resync` and re-reads the store.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from bson import ObjectId

from service.api.errors import SubscriptionDropped
from service.cancellation import cancel_and_wait
from service.jobs.record import Job, JobRecord
from service.mongo.changestream import MemoryTokens, ResumableChangeStream
from service.store import Store

log = structlog.get_logger(__name__)

LOGS_STREAM = "job_logs"
JOBS_STREAM = "jobs"
# Every change of a job document (the page's list, `wait`, a log tail's end).
JOB_CHANGES: list[dict[str, Any]] = [
    {"$match": {"operationType": {"$in": ["insert", "update", "replace", "invalidate"]}}}
]


class LogBatch:
    """A `job_logs` insert as it came off the change stream; shared by all subscribers,
    so it is never mutated and its WebSocket message is encoded at most once."""

    __slots__ = ("_message", "job_id", "lines", "seq", "stream")

    def __init__(self, job_id: ObjectId, seq: int, stream: str, lines: list[str]) -> None:
        self.job_id = job_id
        self.seq = seq
        self.stream = stream
        self.lines = lines
        self._message: str | None = None

    @property
    def end(self) -> int:
        """The seq one past this batch's last line."""
        return self.seq + len(self.lines)

    def message(self) -> str:
        if self._message is None:
            self._message = lines_message(self.seq, self.stream, self.lines)
        return self._message


class JobChange:
    """A `jobs` insert or update with the job as it was looked up after it; shared by all
    subscribers, so its WebSocket message is encoded at most once."""

    __slots__ = ("_message", "job")

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        self._message: str | None = None

    @property
    def job_id(self) -> ObjectId:
        return self.job.id

    def message(self) -> str:
        if self._message is None:
            self._message = job_message(self.job)
        return self._message


@dataclass(frozen=True, slots=True)
class Resync:
    """Events may have been missed: re-read whatever the subscriber shows from the store."""

    reason: str


Item = LogBatch | JobChange | Resync


def job_message(job: JobRecord) -> str:
    return json.dumps({"type": "job", "job": job.to_json()}, separators=(",", ":"))


def lines_message(seq: int, stream: str, lines: list[str]) -> str:
    return json.dumps(
        {"type": "lines", "seq": seq, "stream": stream, "lines": lines},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(eq=False)  # compared and hashed by identity: subscribers live in sets
class Subscription:
    """A bounded queue of items for one WebSocket connection.

    Bounded by both items and log lines: batch sizes vary a lot (one line of a slow trainer,
    thousands from a fast one), and memory follows lines.
    """

    max_items: int
    max_lines: int
    job_ids: frozenset[ObjectId] | None  # None: every job (the jobs stream)
    sweep_id: ObjectId | None = None  # only this sweep's jobs
    _items: deque[Item] = field(default_factory=deque)
    _lines: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    drop_reason: str | None = None
    # Log lines below this seq were already sent (from the store, while catching up):
    # queued batches that end there take no room, so a catch-up is never held against
    # the client as slowness.
    floor: int = 0
    _on_close: Callable[[Subscription], None] | None = None

    def offer(self, item: Item) -> None:
        """Called by the dispatcher; never blocks. Overflow drops the subscriber."""
        if self.drop_reason is not None:
            return
        n = 0
        if isinstance(item, LogBatch):
            if item.end <= self.floor:
                return
            n = len(item.lines)
        if self._full(n):
            self._prune()
        if self._full(n):
            self.drop(
                f"client too slow: more than {self.max_items} messages or "
                f"{self.max_lines} log lines waiting to be sent"
            )
            return
        self._items.append(item)
        self._lines += n
        self._wakeup.set()

    def _full(self, n: int) -> bool:
        return len(self._items) >= self.max_items or self._lines + n > self.max_lines

    def _prune(self) -> None:
        """Forget queued batches that were sent from the store meanwhile (rare path)."""
        kept: deque[Item] = deque()
        lines = 0
        for item in self._items:
            if isinstance(item, LogBatch):
                if item.end <= self.floor:
                    continue
                lines += len(item.lines)
            kept.append(item)
        self._items, self._lines = kept, lines

    def drop(self, reason: str) -> None:
        if self.drop_reason is not None:
            return
        self.drop_reason = reason
        self._items.clear()
        self._lines = 0
        self._wakeup.set()
        self.dropped.set()

    async def get(self) -> Item:
        while not self._items:
            if self.drop_reason is not None:
                raise SubscriptionDropped(self.drop_reason)
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.drop_reason is not None:
            raise SubscriptionDropped(self.drop_reason)
        item = self._items.popleft()
        if isinstance(item, LogBatch):
            self._lines -= len(item.lines)
        return item

    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None


class Fanout:
    """The process's change streams and their subscribers.

    `streams[name].opens` counts `watch()` calls per collection: one per collection however
    many clients subscribe.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue_items: int = 2_000,
        max_queue_lines: int = 100_000,
    ) -> None:
        self.store = store
        self.max_queue_items = max_queue_items
        self.max_queue_lines = max_queue_lines
        self.dropped_subscribers = 0
        self.resyncs = 0
        self._log_subs: dict[ObjectId, set[Subscription]] = {}
        self._job_subs: set[Subscription] = set()
        self._tasks: list[asyncio.Task[None]] = []

        async def open_logs(token: Any | None) -> Any:
            return await store.logs.watch(resume_after=token)

        async def open_jobs(token: Any | None) -> Any:
            return await store.jobs.watch(JOB_CHANGES, resume_after=token, max_await_ms=None)

        self.streams: dict[str, ResumableChangeStream] = {
            LOGS_STREAM: ResumableChangeStream(LOGS_STREAM, open_logs, MemoryTokens()),
            JOBS_STREAM: ResumableChangeStream(JOBS_STREAM, open_jobs, MemoryTokens()),
        }
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            LOGS_STREAM: self._on_log_change,
            JOBS_STREAM: self._on_job_change,
        }

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run(name), name=f"fanout-{name}") for name in self.streams
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)  # they sit in PyMongo: see service.cancellation
        self._tasks = []

    # -- subscribers ---------------------------------------------------------------------

    def subscribe_logs(self, job_id: ObjectId) -> Subscription:
        """Log batches and changes of one job. Register before reading the store."""
        sub = self._new_subscription(frozenset({job_id}))
        self._log_subs.setdefault(job_id, set()).add(sub)
        sub._on_close = self._remove_log_sub
        return sub

    def subscribe_jobs(
        self, job_ids: Iterable[ObjectId] | None = None, *, sweep_id: ObjectId | None = None
    ) -> Subscription:
        """Changes of the given jobs (or of every job when `job_ids` is None), only those of
        one sweep's jobs with `sweep_id`."""
        sub = self._new_subscription(None if job_ids is None else frozenset(job_ids))
        sub.sweep_id = sweep_id
        self._job_subs.add(sub)
        sub._on_close = self._job_subs.discard
        return sub

    def _new_subscription(self, job_ids: frozenset[ObjectId] | None) -> Subscription:
        return Subscription(
            max_items=self.max_queue_items, max_lines=self.max_queue_lines, job_ids=job_ids
        )

    def _remove_log_sub(self, sub: Subscription) -> None:
        assert sub.job_ids is not None
        for job_id in sub.job_ids:
            subs = self._log_subs.get(job_id)
            if subs is None:
                continue
            subs.discard(sub)
            if not subs:
                del self._log_subs[job_id]

    def _all_subscriptions(self) -> list[Subscription]:
        return [*self._job_subs, *(s for subs in self._log_subs.values() for s in subs)]

    def _offer(self, sub: Subscription, item: Item) -> None:
        was_dropped = sub.drop_reason is not None
        sub.offer(item)
        if not was_dropped and sub.drop_reason is not None:
            self.dropped_subscribers += 1
            log.warning("slow subscriber dropped", reason=sub.drop_reason)

    # -- dispatch ------------------------------------------------------------------------

    def _on_log_change(self, change: Mapping[str, Any]) -> None:
        doc = change.get("fullDocument")
        if not doc:
            return
        subs = self._log_subs.get(doc.get("jobId"))
        if not subs:
            return
        batch = LogBatch(doc["jobId"], doc["seq"], doc["stream"], doc["lines"])
        for sub in list(subs):
            self._offer(sub, batch)

    def _on_job_change(self, change: Mapping[str, Any]) -> None:
        doc = change.get("fullDocument")
        if not doc or doc.get("held"):  # deleted since; or a sweep's job not yet let go
            return
        if not self._job_subs and doc.get("_id") not in self._log_subs:
            return  # nobody watches: every submission is an event here, keep it cheap
        item = JobChange(Job.from_doc(doc))
        for sub in list(self._log_subs.get(item.job_id, ())):
            self._offer(sub, item)
        for sub in list(self._job_subs):
            if (sub.job_ids is None or item.job_id in sub.job_ids) and (
                sub.sweep_id is None or sub.sweep_id == item.job.sweepId
            ):
                self._offer(sub, item)

    def _broadcast_resync(self, reason: str) -> None:
        self.resyncs += 1
        for sub in self._all_subscriptions():
            self._offer(sub, Resync(reason))

    # -- the streams ---------------------------------------------------------------------

    async def _run(self, name: str) -> None:
        stream, handler = self.streams[name], self._handlers[name]

        async def on_open(resumed: bool) -> None:
            if not resumed:  # events of the gap may be lost: every subscriber re-reads
                self._broadcast_resync(f"{name} change stream (re)started")

        async def on_change(change: Mapping[str, Any]) -> None:
            try:
                handler(change)
            except Exception:  # one bad event must not stop everyone's stream
                log.exception("change dispatch failed", collection=name)

        await stream.run(on_change, on_open)
