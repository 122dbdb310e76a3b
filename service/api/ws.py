"""The WebSocket routes: `/jobs/{id}/logs/ws?from=N` (log tail) and `/ws/jobs` (job changes).

Both sit on the process's `Fanout` (one change stream per collection). The log tail's
order of work is what makes it gap-free and repeat-free:

1. subscribe to live batches of the job (before anything is read);
2. send the stored lines from N, page by page;
3. send live batches, skipping lines already sent (seq below the next expected one); a
   batch that starts past the next expected seq reveals a gap, which is filled from the
   store before the batch is sent;
4. on a final job status, read the store to its end (the last batch may be committed
   after the status update is seen) and only then send `{"type": "end", ...}`.

A subscriber that falls too far behind is closed with code 4001 and a reason that says
from which seq to resume; `GateQueueClient.logs` does exactly that.

A socket is only as good as the token it was opened with: it re-checks its principal when
the tokens change (before anything more is sent) and at least every `recheck_s`, and is
closed with 1008 (policy violation) once its token or session is gone (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import WSCloseCode, web
from bson import ObjectId
from pydantic import Field

from service.api.auth import AUTH, principal_of
from service.api.errors import ApiError, Revoked
from service.api.fanout import (
    Fanout,
    JobChange,
    LogBatch,
    Resync,
    Subscription,
    SubscriptionDropped,
    job_message,
    lines_message,
)
from service.api.keys import SETTINGS, STORE
from service.api.routes_jobs import ERR_404_JOB, ERR_422_QUERY, JOB_ID, FromQuery, existing_job_id
from service.api.routing import Query, Reply, Route, not_found
from service.cancellation import cancel_and_wait
from service.config import DEFAULT_MAX_WEBSOCKETS, DEFAULT_MAX_WEBSOCKETS_PER_USER
from service.jobs.record import JobRecord
from service.store import Store
from service.store.jobs import parse_job_id
from service.tokens import Role

log = structlog.get_logger(__name__)

# Close codes in the private range: a client can tell "resume later" from "give up".
CLOSE_TOO_SLOW = 4001  # resume from the last seq received
CLOSE_SERVER_ERROR = 4002  # the store failed mid-stream; resume from the last seq
CLOSE_GOING_AWAY = WSCloseCode.GOING_AWAY  # the API process is stopping
CLOSE_REVOKED = WSCloseCode.POLICY_VIOLATION  # 1008: its token or session is gone

# Lines per store read while catching up: bounds memory for logs of any length.
CATCH_UP_PAGE_LINES = 5_000
# Seconds a close may wait for a client that no longer reads before the socket is cut.
CLOSE_TIMEOUT_S = 2.0
HEARTBEAT_S = 30.0
MAX_JOB_FILTER = 100
# Seconds between re-checks of a socket's principal when the tokens file did not change
# (a session ended or expired, or a replica's file changed first).
RECHECK_S = 60.0
# A handshake refused for the socket caps says when to try again.
SOCKETS_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class LiveSettings:
    max_queue_items: int = 2_000
    max_queue_lines: int = 100_000
    catch_up_page_lines: int = CATCH_UP_PAGE_LINES
    close_timeout_s: float = CLOSE_TIMEOUT_S
    recheck_s: float = RECHECK_S
    max_sockets: int = DEFAULT_MAX_WEBSOCKETS
    max_sockets_per_user: int = DEFAULT_MAX_WEBSOCKETS_PER_USER


class SocketQuota:
    """Open WebSockets, in total and per token name (docs/security.md, "Connections"): a
    socket is held by its handler for as long as it is open, so without a cap one client
    could hold every connection the server has."""

    def __init__(self, total: int, per_user: int) -> None:
        self.total = total
        self.per_user = per_user
        self._open: Counter[str | None] = Counter()

    @contextlib.contextmanager
    def hold(self, name: str | None) -> Iterator[None]:
        """Counted from before the handshake (nothing awaited between the check and the
        count), so concurrent handshakes cannot pass the cap together."""
        if sum(self._open.values()) >= self.total:
            raise self._refused(f"the server has {self.total} WebSockets open, its limit")
        if self._open[name] >= self.per_user:
            who = "the anonymous user" if name is None else f"token {name!r}"
            raise self._refused(f"{who} has {self.per_user} WebSockets open, its limit")
        self._open[name] += 1
        try:
            yield
        finally:
            self._open[name] -= 1
            if not self._open[name]:
                del self._open[name]

    @staticmethod
    def _refused(message: str) -> ApiError:
        return ApiError(
            503,
            "too_many_websockets",
            f"{message}; close one or retry later",
            headers={"Retry-After": str(SOCKETS_RETRY_AFTER_S)},
        )


class Live:
    """What the WebSocket routes share per app: the fanout and the open connections.

    `connections` is there for shutdown: every client gets a 1001 close.
    """

    def __init__(self, store: Store, settings: LiveSettings | None = None) -> None:
        self.settings = settings or LiveSettings()
        self.fanout = Fanout(
            store,
            max_queue_items=self.settings.max_queue_items,
            max_queue_lines=self.settings.max_queue_lines,
        )
        self.connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self.quota = SocketQuota(self.settings.max_sockets, self.settings.max_sockets_per_user)

    async def register(self, conn: Connection) -> None:
        self.connections.add(conn)

    async def unregister(self, conn: Connection) -> None:
        conn.sub.close()
        self.connections.discard(conn)

    async def close_all(self, code: int, message: str) -> None:
        await asyncio.gather(
            *(c.close(code, message) for c in list(self.connections)), return_exceptions=True
        )


LIVE: web.AppKey[Live] = web.AppKey("live", Live)


class Connection:
    """One accepted WebSocket with its subscription; closes itself exactly once."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        sub: Subscription,
        kind: str,
        job_id: ObjectId | None = None,
        *,
        settings: LiveSettings | None = None,
    ) -> None:
        settings = settings or LiveSettings()
        self.request = request
        self.close_timeout_s = settings.close_timeout_s
        self.recheck_s = settings.recheck_s
        self.ws = ws
        self.sub = sub
        self.kind = kind
        self.job_id = job_id
        self._next_seq = 0
        self._closing = False
        self._auth = request.app[AUTH]
        # The tokens' generation this socket's principal was last checked against: a change
        # after the handshake's check (even before this socket was accepted) is re-checked.
        self._checked = principal_of(request).generation

    @property
    def next_seq(self) -> int:
        """Logs: the seq of the next line to send."""
        return self._next_seq

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        self._next_seq = value
        self.sub.floor = value

    async def send(self, text: str) -> None:
        if self._auth.generation != self._checked:
            await self.recheck()  # nothing more goes out to a token that was just removed
        await self.ws.send_str(text)

    async def recheck(self) -> None:
        """Raise Revoked unless the handshake's token or session still may read."""
        auth = self._auth
        if auth.open:
            return
        try:
            principal = await auth.authenticate(self.request)
        except ApiError:  # a bearer token that is no longer known
            principal = None
        if principal is None or not principal.may(Role.READ):
            raise Revoked("token or session ended: sign in again")
        self._checked = principal.generation

    async def _watch_principal(self) -> None:
        """Re-check on every change of the tokens, and every `recheck_s` in any case; returns
        (with the reason) when the principal is gone."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.recheck_s):
                    await self._auth.changed(self._checked)
            try:
                await self.recheck()
            except Revoked:
                raise
            except Exception as exc:  # the store failed: keep the socket, try again later
                log.warning("websocket principal not re-checked", error=repr(exc))

    async def close(self, code: int, message: str) -> None:
        """Close with a reason; a client that no longer reads is cut off after a grace."""
        if self._closing:
            return
        self._closing = True
        self.sub.close()
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.ws.close(code=code, message=message[:120].encode())
        except TimeoutError:
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    async def serve(self, pump: Callable[[], Coroutine[Any, Any, tuple[int, str]]]) -> None:
        """Run `pump` (which sends) beside a reader (which notices the client leaving) and
        the subscription's drop signal; whichever ends first decides how to close."""
        pump_task = asyncio.create_task(pump())
        reader_task = asyncio.create_task(self._read_until_closed())
        dropped_task = asyncio.create_task(self.sub.dropped.wait())
        principal_task = asyncio.create_task(self._watch_principal())
        tasks = {pump_task, reader_task, dropped_task, principal_task}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*tasks)  # the pump may be in a store read
        revoked = next(
            (t.exception() for t in (principal_task, pump_task)
             if t in done and not t.cancelled() and isinstance(t.exception(), Revoked)),
            None,
        )  # fmt: skip
        code: int
        if revoked is not None:
            code, message = CLOSE_REVOKED, str(revoked)
        elif pump_task in done and not pump_task.cancelled():
            exc = pump_task.exception()
            if exc is None:
                code, message = pump_task.result()
            elif isinstance(exc, SubscriptionDropped):
                code, message = self._too_slow(exc.reason)
            else:
                log.warning("websocket stream failed", kind=self.kind, error=repr(exc))
                code, message = CLOSE_SERVER_ERROR, self._resume_hint("server error")
        elif dropped_task in done:
            code, message = self._too_slow(self.sub.drop_reason or "client too slow")
        else:  # the client went away (or closed first)
            code, message = WSCloseCode.OK, ""
        await self.close(code, message)

    def _too_slow(self, reason: str) -> tuple[int, str]:
        return CLOSE_TOO_SLOW, self._resume_hint(reason)

    def _resume_hint(self, reason: str) -> str:
        if self.kind == "logs":
            return f"{reason}; resume from={self.next_seq}"
        return reason

    async def _read_until_closed(self) -> None:
        # Clients have nothing to say; reading keeps pings answered and sees the close.
        async for _ in self.ws:
            pass


def _prepare(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    if not ws.can_prepare(request).ok:
        raise ApiError(
            400, "websocket_required", "this route speaks WebSocket: send an Upgrade request"
        )
    return ws


def end_message(job: JobRecord, seq: int) -> str:
    return json.dumps(
        {
            "type": "end",
            "status": job.status.value,
            "exitCode": job.exitCode,
            "error": job.error,
            "seq": seq,
        },
        separators=(",", ":"),
    )


# -- the log tail ------------------------------------------------------------------------


class LogTail:
    """The sending half of one log WebSocket; `conn.next_seq` is its only state."""

    def __init__(self, conn: Connection, store: Store, page_lines: int) -> None:
        self.conn = conn
        self.store = store
        self.page_lines = page_lines
        assert conn.job_id is not None
        self.job_id: ObjectId = conn.job_id

    async def catch_up(self) -> None:
        """Send every stored line from `next_seq` to the end of what is stored now."""
        while True:
            batches = await self.store.logs.read(
                self.job_id, self.conn.next_seq, limit=self.page_lines
            )
            if not batches:
                return
            for batch in batches:
                # Advanced before the send: a send cancelled while it waits for the socket
                # has already handed its frame over, and the close reason must not lag it.
                self.conn.next_seq = batch["seq"] + len(batch["lines"])
                await self.conn.send(lines_message(batch["seq"], batch["stream"], batch["lines"]))

    async def send_live(self, batch: LogBatch) -> None:
        conn = self.conn
        if batch.end <= conn.next_seq:
            return  # already sent from the store
        if batch.seq > conn.next_seq:
            await self.catch_up()  # a gap: fill it from the store, which has it by now
            if batch.end <= conn.next_seq:
                return
            if batch.seq > conn.next_seq:  # pragma: no cover - the store tiles the log
                log.error("log gap persists", job_id=str(self.job_id), at=conn.next_seq)
                return
        start = conn.next_seq
        conn.next_seq = batch.end
        if batch.seq == start:
            await conn.send(batch.message())
        else:
            await conn.send(lines_message(start, batch.stream, batch.lines[start - batch.seq :]))

    async def finish(self, job: JobRecord) -> tuple[int, str]:
        await self.catch_up()
        await self.conn.send(end_message(job, self.conn.next_seq))
        return WSCloseCode.OK, f"job {job.status.value}"

    async def run(self) -> tuple[int, str]:
        await self.catch_up()
        job = await self.store.jobs.get(self.job_id)
        if job is None:
            return WSCloseCode.OK, "job deleted"
        if job.finished:
            return await self.finish(job)
        while True:
            item = await self.conn.sub.get()
            if isinstance(item, LogBatch):
                await self.send_live(item)
            elif isinstance(item, JobChange):
                if item.job.finished:
                    return await self.finish(item.job)
            elif isinstance(item, Resync):
                # The job's final update may be among what was missed: look it up too.
                await self.catch_up()
                job = await self.store.jobs.get(self.job_id)
                if job is None:
                    return WSCloseCode.OK, "job deleted"
                if job.finished:
                    return await self.finish(job)


class TailQuery(FromQuery):
    """No token in the URL (it would end up in logs and histories): browsers are signed in by
    their session cookie, other clients send `Authorization` on the handshake."""


class WatchQuery(Query):
    id: list[str] = Field(
        default_factory=list,
        max_length=MAX_JOB_FILTER,
        description=f"Job ids to watch, repeated or comma-separated (at most {MAX_JOB_FILTER}); "
        "their current documents are sent first.",
    )
    sweep: str | None = Field(
        None, pattern="^[0-9a-fA-F]{24}$", description="Only the jobs of this sweep."
    )


async def logs_ws(request: web.Request, query: TailQuery) -> web.StreamResponse:
    live = request.app[LIVE]
    store = request.app[STORE]
    oid = await existing_job_id(request)
    from_seq = query.from_
    ws = _prepare(request)
    with live.quota.hold(principal_of(request).name):
        sub = live.fanout.subscribe_logs(oid)  # before any store read: see the module doc
        try:
            await ws.prepare(request)
        except BaseException:
            sub.close()
            raise
        conn = Connection(request, ws, sub, "logs", oid, settings=live.settings)
        conn.next_seq = from_seq
        await live.register(conn)
        tail = LogTail(conn, store, live.settings.catch_up_page_lines)
        try:
            await conn.serve(tail.run)
        finally:  # also when the handler is cancelled: never leave a subscriber behind
            await asyncio.shield(live.unregister(conn))
    return ws


# -- job changes -------------------------------------------------------------------------


def _job_filter(raw: list[str]) -> list[ObjectId] | None:
    if not raw:
        return None
    ids = [parse_job_id(v) if len(v) == 24 else None for v in raw]
    bad = [v for v, oid in zip(raw, ids, strict=True) if oid is None]
    if bad:
        raise not_found("job", bad[0])
    return [oid for oid in ids if oid is not None]


async def _job_changes(
    conn: Connection, store: Store, ids: list[ObjectId] | None
) -> tuple[int, str]:
    """With `?id=`, the watched jobs' current documents come first, so a client needs no
    separate GET (and cannot miss a change between the GET and the subscription)."""

    async def snapshot(ids: Iterable[ObjectId]) -> None:
        for oid in ids:
            job = await store.jobs.get(oid)
            if job is not None:
                await conn.send(job_message(job))

    if ids is not None:
        await snapshot(ids)
    while True:
        item = await conn.sub.get()
        if isinstance(item, JobChange):
            await conn.send(item.message())
        elif isinstance(item, Resync):
            await conn.send(json.dumps({"type": "resync", "reason": item.reason}))
            if ids is not None:
                await snapshot(ids)


async def jobs_ws(request: web.Request, query: WatchQuery) -> web.StreamResponse:
    live = request.app[LIVE]
    ids = _job_filter(query.id)
    store = request.app[STORE]
    if ids is not None:
        # Watching a job nobody has would wait forever: refuse as GET /jobs/{id} would.
        found = await store.jobs.existing(ids)
        missing = [oid for oid in ids if oid not in found]
        if missing:
            raise not_found("job", missing[0])
    sweep_id = None
    if query.sweep is not None:
        sweep_id = ObjectId(query.sweep)
        if await store.sweeps.get(sweep_id) is None:
            raise not_found("sweep", sweep_id)
    ws = _prepare(request)
    with live.quota.hold(principal_of(request).name):
        sub = live.fanout.subscribe_jobs(ids, sweep_id=sweep_id)
        try:
            await ws.prepare(request)
        except BaseException:
            sub.close()
            raise
        conn = Connection(request, ws, sub, "jobs", settings=live.settings)
        await live.register(conn)
        try:
            await conn.serve(lambda: _job_changes(conn, store, ids))
        finally:
            await asyncio.shield(live.unregister(conn))
    return ws


# -- wiring ------------------------------------------------------------------------------


async def _fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    live = app[LIVE]
    await live.fanout.start()
    yield
    await live.fanout.stop()


async def _on_shutdown(app: web.Application) -> None:
    await app[LIVE].close_all(CLOSE_GOING_AWAY, "server shutting down; reconnect")


def setup(app: web.Application) -> None:
    """The fanout's lifetime; a test may put its own `Live` in the app first."""
    if LIVE not in app:
        settings = app[SETTINGS]
        app[LIVE] = Live(
            app[STORE],
            LiveSettings(
                max_sockets=settings.max_websockets,
                max_sockets_per_user=settings.max_websockets_per_user,
            ),
        )
    app.cleanup_ctx.append(_fanout_ctx)
    app.on_shutdown.append(_on_shutdown)


_UPGRADED = Reply(101, "Switched to WebSocket; the messages are described in docs/client.md.")
_NOT_WS = Reply(400, "Not a WebSocket upgrade request (code `websocket_required`).", "Error")
_TOO_MANY = Reply(
    503, "Too many WebSockets open, in all or for this token (code `too_many_websockets`, "
    "with Retry-After); or MongoDB is not reachable.", "Error", headers=("Retry-After",),
)  # fmt: skip

ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/jobs/{id}/logs/ws", logs_ws, "tailJobLogs",
        "Tail a job's log over WebSocket: stored lines from `from`, live lines, an end message",
        websocket=True, params=(JOB_ID,), query=TailQuery,
        replies=(_UPGRADED, _NOT_WS, ERR_404_JOB, ERR_422_QUERY, _TOO_MANY),
    ),
    Route(
        "GET", "/ws/jobs", jobs_ws, "watchJobs",
        "Job changes over WebSocket (all jobs, those named by `id`, or a sweep's)",
        websocket=True, query=WatchQuery,
        replies=(_UPGRADED, _NOT_WS,
                 Reply(404, "An `id` names no job, or `sweep` no sweep.", "Error"),
                 ERR_422_QUERY, _TOO_MANY),
    ),
)  # fmt: skip
