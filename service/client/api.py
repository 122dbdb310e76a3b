"""An asyncio client for the gatequeue API.

    async with GateQueueClient("http://127.0.0.1:8080") as gq:
        job = await gq.submit(gateOptimizer="sparsemax_noise", gates=3332, epochs=5)
        async for line in gq.logs(job["id"]):
            print(line.seq, line.line)
        final = await gq.wait(job["id"])

Failures raise `GateQueueError`, which carries the API's error body (`code`, `message`,
`fields`) and the HTTP status; an API that cannot be reached raises
`GateQueueConnectionError`, a subclass, so one `except` handles both.

Following is push, not polling: `logs(follow=True)` reads the log WebSocket, and `wait`
and `watch` read `/ws/jobs`. Both reconnect on their own after a dropped connection; the
log iterator resumes from the line after the last one it yielded, so every line comes
exactly once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import quote

import aiohttp

from service import config
from service.jobs.status import FINISHED
from service.retry import Backoff, Failures

DEFAULT_API = "http://127.0.0.1:8080"
FINAL_STATUSES = frozenset(s.value for s in FINISHED)

# WebSocket close codes of the server (service.api.ws) after which resuming makes sense
# (with backoff, and at most `max_reconnect_attempts` times without a line in between), and
# those after which it never does: a policy violation (1008) and the 44xx range (a refused
# origin, a missing or expired ticket), which a retry cannot fix.
_RESUMABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 4001, 4002})
_PERMANENT_CLOSE_CODES = frozenset({1008, *range(4400, 4500)})


# A job as the API sends it: the JSON of `service.jobs.record.Job` (ids as hex strings,
# times as ISO-8601). `Job.model_validate(job)` turns it into the typed record.
Job = dict[str, Any]


# A sweep as the API sends it (`service.sweeps.record.Sweep`, with `jobs` from
# `GateQueueClient.sweep`).
Sweep = dict[str, Any]

# `GateQueueClient.list` shadows the builtin inside the class body.
_List = list

# A burst of job changes (a sweep's jobs finishing together) becomes one re-read of the
# sweep: changes that follow within this long are taken with the first.
_SWEEP_COALESCE_S = 0.05


class JobPage(list[Job]):
    """One page of `GET /jobs`, newest first; `next` is the `after` of the next page."""

    def __init__(self, jobs: list[Job], next_after: str | None) -> None:
        super().__init__(jobs)
        self.next = next_after


class SweepPage(list[Sweep]):
    """One page of `GET /sweeps`, newest first; `next` is the `after` of the next page."""

    def __init__(self, sweeps: list[Sweep], next_after: str | None) -> None:
        super().__init__(sweeps)
        self.next = next_after


class LogLine(NamedTuple):
    seq: int
    stream: str
    line: str


@dataclass(frozen=True)
class LogEnd:
    """The log tail's last message: the job's final state and the log's length."""

    status: str
    exit_code: int | None
    error: str | None = None
    seq: int | None = None


class GateQueueError(Exception):
    """An error answer of the API; `body` is its `{"error": {...}}` document as sent."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        fields: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = fields
        self.body = body

    @classmethod
    def from_response(cls, status: int, body: Any, text: str) -> GateQueueError:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return cls(
                str(err.get("message") or f"HTTP {status}"),
                status=status,
                code=err.get("code"),
                fields=err.get("fields"),
                body=body,
            )
        return cls(f"HTTP {status}: {text[:200]}", status=status, body=body)

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.insert(0, f"[{self.status}{' ' + self.code if self.code else ''}]")
        for f in self.fields or []:
            parts.append(f"\n  {f.get('field')}: {f.get('message')}")
        return " ".join(parts[:2]) + "".join(parts[2:])


class GateQueueConnectionError(GateQueueError):
    """The API did not answer (refused, unreachable, timed out, or kept dropping us)."""


class GateQueueClient:
    """Typed access to one gatequeue API; use it as an async context manager.

    `token` defaults to `$GATEQUEUE_API_TOKEN`, as the API itself reads it.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        reconnect_delay_s: float = 0.2,
        max_reconnect_delay_s: float = 5.0,
        max_reconnect_attempts: int = 12,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token if token is not None else config.client_token()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.reconnect_delay_s = reconnect_delay_s
        self.max_reconnect_delay_s = max_reconnect_delay_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing ------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        return self._session

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _ws_url(self, path: str) -> str:
        url = self._url(path)
        if url.startswith("https://"):
            return "wss://" + url.removeprefix("https://")
        return "ws://" + url.removeprefix("http://")

    @contextlib.asynccontextmanager
    async def _response(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A successful response; an error answer raises `GateQueueError` with its body, and
        a failure to reach the API (also while the body is read) `GateQueueConnectionError`."""
        try:
            async with self._http().request(method, self._url(path), **kwargs) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise GateQueueError.from_response(resp.status, _json_or_none(text), text)
                yield resp
        except aiohttp.ClientConnectionError as exc:
            raise GateQueueConnectionError(
                f"cannot reach the gatequeue API at {self.base_url}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise GateQueueConnectionError(
                f"the gatequeue API at {self.base_url} did not answer in time"
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        async with self._response(
            method, path, params=params, json=json_body, headers=headers
        ) as resp:
            return _json_or_none(await resp.text())

    @staticmethod
    def _job_path(job_id: str) -> str:
        return "/jobs/" + quote(str(job_id), safe="")

    async def _connect_ws(
        self, path: str, params: Mapping[str, str | int]
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self._http().ws_connect(
                self._ws_url(path), params=params, heartbeat=30.0, max_msg_size=0
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise GateQueueError(
                f"WebSocket {path} refused: {exc.message}", status=exc.status, code="ws_refused"
            ) from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise GateQueueConnectionError(
                f"cannot reach the gatequeue API at {self.base_url}: {exc}"
            ) from exc

    async def _explain_refusal(self, job_id: str, exc: GateQueueError) -> GateQueueError:
        """A refused WebSocket handshake has no body; the same question over HTTP does."""
        if exc.status is not None and 400 <= exc.status < 500:
            try:
                await self.get(job_id)
            except GateQueueError as detailed:
                return detailed
        return exc

    def _failures(self) -> Failures:
        """The reconnect schedule of one stream: `reconnect_delay_s` doubling up to
        `max_reconnect_delay_s`, jittered, at most `max_reconnect_attempts` in a row."""
        policy = Backoff(initial_s=self.reconnect_delay_s, max_s=self.max_reconnect_delay_s)
        return Failures(
            policy, attempts=self.max_reconnect_attempts, operation="websocket_reconnect"
        )

    async def _pause(self, failures: Failures, last: BaseException) -> None:
        """Wait before reconnecting, or raise once there were too many failures in a row."""
        delay = failures.failed()
        if failures.exhausted:
            raise GateQueueConnectionError(
                f"lost the connection to {self.base_url} and could not get it back "
                f"after {self.max_reconnect_attempts} attempts: {last}"
            ) from last
        await asyncio.sleep(delay)

    async def _job_changes(
        self,
        params: Mapping[str, str | int],
        refused: Callable[[GateQueueError], Awaitable[GateQueueError]],
    ) -> AsyncGenerator[tuple[aiohttp.ClientWebSocketResponse, Failures], None]:
        """`/ws/jobs` sockets, one after another: a socket that closed or broke (the server
        restarting, the network dropping) is followed by a new one after a pause. The reader
        resets the failures once a message came through; a refused handshake raises what
        `refused` makes of it."""
        failures = self._failures()
        while True:
            try:
                ws = await self._connect_ws("/ws/jobs", params)
            except GateQueueConnectionError as exc:
                await self._pause(failures, exc)
                continue
            except GateQueueError as exc:
                raise await refused(exc) from None
            try:
                yield ws, failures
            finally:
                await ws.close()
            await self._pause(
                failures, ws.exception() or ConnectionError(f"closed with {ws.close_code}")
            )

    # -- jobs ----------------------------------------------------------------------------

    async def submit(self, *, idempotency_key: str | None = None, **hyperparameters: Any) -> Job:
        """Submit a job: camelCase fields as in POST /jobs (`gateOptimizer`, `gates`, ...).

        With `idempotency_key`, a retried submit returns the job of the first attempt.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._request("POST", "/jobs", json_body=hyperparameters, headers=headers)

    async def get(self, job_id: str) -> Job:
        return await self._request("GET", self._job_path(job_id))

    async def list(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: str | None = None,
        submitted_by: str | None = None,
        sweep: str | None = None,
    ) -> JobPage:
        """One page, newest first; pass `page.next` as `after` for the next one."""
        params = _query(limit=limit, status=status, sweep=sweep, after=after,
                        submittedBy=submitted_by)  # fmt: skip
        body = await self._request("GET", "/jobs", params=params)
        return JobPage(body["jobs"], body.get("next"))

    async def cancel(self, job_id: str) -> Job:
        """Pending jobs are Cancelled at once; Running ones are stopped by their worker.
        A finished job is a `GateQueueError` with status 409; another user's job, without an
        admin token, one with status 403."""
        return await self._request("POST", self._job_path(job_id) + "/cancel", json_body={})

    async def whoami(self) -> dict[str, Any]:
        """`{name, role, authenticated, open}` of this client's token."""
        return await self._request("GET", "/whoami")  # type: ignore[no-any-return]

    async def usage(self, since: str | None = None) -> dict[str, Any]:
        """`GET /usage`: `{since, users, sweeps}`, each row with `jobs` by status,
        `slotHours` ({gpu, cpu}), `logBytes` and `fileBytes`; an admin token gets every
        user, any other its own. `since`: ISO-8601 (a bad one is a 422 GateQueueError)."""
        params = {} if since is None else {"since": since}
        return await self._request("GET", "/usage", params=params)  # type: ignore[no-any-return]

    async def metrics(self, job_id: str) -> _List[dict[str, Any]]:
        """One row per finished epoch: `{epoch, epochs, train_loss, test_acc, ..., ts}`."""
        body = await self._request("GET", self._job_path(job_id) + "/metrics")
        return list(body["metrics"])

    async def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Saves an artifact of a finished run (`job["artifacts"][i]["name"]`, e.g.
        `network.json`) to `dest` (a directory gets the file's own name). The file appears
        only when complete: it is written next to `dest` and renamed."""
        url_path = self._job_path(job_id) + "/artifacts/" + quote(name, safe="/")
        return await self._save(url_path, Path(dest), name)

    async def download_checkpoint(self, job_id: str, dest: str | Path) -> Path:
        """Saves the job's latest checkpoint (`job["checkpoint"]`) to `dest` (a directory
        gets `<job>-epoch-K-step-S.pt`); resume it with `python -m trainer --resume-from`."""
        job = await self.get(job_id)
        checkpoint = job.get("checkpoint")
        if not checkpoint:
            raise GateQueueError(f"job {job_id} has no checkpoint (yet)", code="no_checkpoint")
        name = f"{job['id']}-epoch-{checkpoint['epoch']}-step-{checkpoint.get('step', 0)}.pt"
        return await self._save(self._job_path(job_id) + "/checkpoint", Path(dest), name)

    async def _save(self, url_path: str, dest: Path, name: str) -> Path:
        path = await asyncio.to_thread(_download_target, dest, name)
        part = path.with_name(path.name + ".part")
        try:
            async with self._response("GET", url_path) as resp:
                out = await asyncio.to_thread(part.open, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
            await asyncio.to_thread(part.replace, path)
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)
        return path

    # -- data sets (docs/datasets.md) ----------------------------------------------------

    async def upload_dataset(
        self,
        path: str | Path,
        *,
        name: str,
        label_column: str | None = None,
        bits: int | None = None,
        thresholds: str | None = None,
        categorical: Sequence[str] = (),
        split_seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Registers a data set from a local `.npz` or CSV, streamed from disk (never read
        whole); the record (`status` 201: new, 200: the same data set was registered
        before). `progress(sent, total)` is called as the file goes."""
        path = Path(path)
        total = (await asyncio.to_thread(path.stat)).st_size
        params: dict[str, str] = {"name": name, "filename": path.name}
        for key, value in (("labelColumn", label_column), ("bits", bits),
                           ("thresholds", thresholds), ("splitSeed", split_seed)):  # fmt: skip
            if value is not None:
                params[key] = str(value)
        if categorical:
            params["categorical"] = ",".join(categorical)

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            fh = await asyncio.to_thread(path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(fh.read, 1 << 20):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, total)
            finally:
                await asyncio.to_thread(fh.close)

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(total)}
        async with self._response(
            "POST", "/datasets", params=params, data=chunks(), headers=headers
        ) as resp:
            record: dict[str, Any] = json.loads(await resp.text())
            record["status"] = resp.status
            return record

    async def datasets(self, name: str | None = None) -> _List[dict[str, Any]]:
        """Registered data sets (newest first), then the built-ins (`builtin: true`)."""
        params = {} if name is None else {"name": name}
        body = await self._request("GET", "/datasets", params=params)
        return list(body["datasets"])

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self._request("GET", "/datasets/" + quote(dataset_id, safe=""))  # type: ignore[no-any-return]

    async def download_dataset(
        self, dataset_id: str, dest: str | Path, *, encoded: bool = False
    ) -> Path:
        """Saves the data set's file as it was uploaded, or (`encoded`) the encoded file a
        trainer reads: what `--dataset-file` of trainer.evaluate and trainer.circuit take."""
        record = await self.dataset(dataset_id)
        base = f"/datasets/{quote(dataset_id, safe='')}"
        if encoded:
            name = f"{record['name']}-{record['version']}.encoded.npz"
            return await self._save(base + "/encoded", Path(dest), name)
        name = record["source"].get("filename") or (
            f"{record['name']}-{record['version']}.{record['source']['format']}"
        )
        return await self._save(base + "/file", Path(dest), name)

    async def delete_dataset(self, dataset_id: str) -> dict[str, Any]:
        return await self._request("DELETE", "/datasets/" + quote(dataset_id, safe=""))  # type: ignore[no-any-return]

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then again after every change, until it has finished. After a
        reconnect, the first message is the job as it is then."""

        async def refused(exc: GateQueueError) -> GateQueueError:
            return await self._explain_refusal(job_id, exc)

        async with contextlib.aclosing(self._job_changes({"id": job_id}, refused)) as sockets:
            async for ws, failures in sockets:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(msg.data)
                    if data.get("type") != "job":
                        continue
                    failures.reset()
                    job: Job = data["job"]
                    yield job
                    if job.get("status") in FINAL_STATUSES:
                        return

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """Until the job has finished; returns its final document (status, latestMetrics)."""
        async with asyncio.timeout(timeout_s):
            async for job in self.watch(job_id):
                if job.get("status") in FINAL_STATUSES:
                    return job
        raise GateQueueError(f"job {job_id} stopped being reported before it finished")

    # -- sweeps --------------------------------------------------------------------------

    @staticmethod
    def _sweep_path(sweep_id: str) -> str:
        return "/sweeps/" + quote(str(sweep_id), safe="")

    async def submit_sweep(
        self,
        *,
        base: Mapping[str, Any],
        grid: Mapping[str, _List[Any]] | None = None,
        random: Mapping[str, Any] | None = None,
        runs: _List[Mapping[str, Any]] | None = None,
        max_parallel: int | None = None,
        priority: int | None = None,
        metric: str | None = None,
        seeds: int | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        scheduler: Mapping[str, Any] | None = None,
        search: Mapping[str, Any] | None = None,
        space: Mapping[str, Any] | None = None,
    ) -> Sweep:
        """Many jobs in one request (docs/sweeps.md): `grid` (every combination) crossed with
        `runs` (explicit overrides), plus `random` (`{"n", "seed", "space"}`), each on top of
        `base`, `seeds` times each (seed 0..seeds-1). All or nothing: a value no option accepts
        is a GateQueueError 422 whose `fields` say where it is (`grid.seed.1`), a combination
        that is no valid job one whose `body["error"]["combination"]` names it, and no job is
        made.

        `scheduler` stops runs early (`{"type": "asha", "minEpochs", "reductionFactor"}` or
        `{"type": "median", "graceEpochs"}`); `search` picks the combinations (`{"type":
        "grid"}`, `{"type": "random" | "tpe", "trials", "seed"}`) from `space` and the grid's
        lists (docs/sweeps.md, "Schedulers" and "Search")."""
        body: dict[str, Any] = {"base": dict(base)}
        for key, value in (
            ("name", name), ("grid", grid), ("random", random), ("runs", runs),
            ("maxParallel", max_parallel), ("priority", priority), ("metric", metric),
            ("seeds", seeds), ("scheduler", scheduler), ("search", search), ("space", space),
        ):  # fmt: skip
            if value is not None:
                body[key] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._request("POST", "/sweeps", json_body=body, headers=headers)  # type: ignore[no-any-return]

    async def sweep(self, sweep_id: str) -> Sweep:
        """The sweep with its counts, its best run and every run (`jobs`)."""
        return await self._request("GET", self._sweep_path(sweep_id))  # type: ignore[no-any-return]

    async def sweeps(
        self, *, limit: int = 50, after: str | None = None, submitted_by: str | None = None
    ) -> SweepPage:
        params = _query(limit=limit, after=after, submittedBy=submitted_by)
        body = await self._request("GET", "/sweeps", params=params)
        return SweepPage(body["sweeps"], body.get("next"))

    async def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """`{"sweep", "cancelled", "stopping"}`: Pending jobs Cancelled, Running ones asked
        to stop by their workers."""
        return await self._request("POST", self._sweep_path(sweep_id) + "/cancel", json_body={})  # type: ignore[no-any-return]

    async def watch_sweep(self, sweep_id: str) -> AsyncIterator[Sweep]:
        """The sweep now, then again after its jobs change, until none is left to finish.

        Pushed by `/ws/jobs?sweep=ID`; each change (or burst of changes) is one re-read of
        the sweep, so what is yielded is always whole and consistent."""

        async def refused(exc: GateQueueError) -> GateQueueError:
            await self.sweep(sweep_id)  # the refusal, explained (404, 401, ...)
            return exc

        params = {"sweep": sweep_id}
        async with contextlib.aclosing(self._job_changes(params, refused)) as sockets:
            async for ws, failures in sockets:
                # subscribed first, then read: no change between the two is missed
                sweep = await self.sweep(sweep_id)
                yield sweep
                if sweep.get("remaining") == 0:
                    return
                while await _changed(ws):
                    failures.reset()
                    sweep = await self.sweep(sweep_id)
                    yield sweep
                    if sweep.get("remaining") == 0:
                        return

    async def wait_sweep(self, sweep_id: str, timeout_s: float | None = None) -> Sweep:
        """Until every job of the sweep has finished; the sweep then (`best`, every run)."""
        async with asyncio.timeout(timeout_s):
            async for sweep in self.watch_sweep(sweep_id):
                if sweep.get("remaining") == 0:
                    return sweep
        raise GateQueueError(f"sweep {sweep_id} stopped being reported before it finished")

    # -- logs ----------------------------------------------------------------------------

    def logs(self, job_id: str, follow: bool = True, from_seq: int = 0) -> LogStream:
        """The job's log lines from `from_seq`. With `follow`, live lines follow until the
        job ends (`stream.end` then says how); without, only what is stored now."""
        return LogStream(self, job_id, follow=follow, from_seq=from_seq)


def _query(**values: str | int | None) -> dict[str, str | int]:
    """A listing's query parameters, by their API names; the unset ones left out."""
    return {name: value for name, value in values.items() if value is not None and value != ""}


async def _changed(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Wait for a message (a job changed, or a resync); take the ones right behind it too.
    False once the socket closed."""
    msg = await ws.receive()
    if msg.type is not aiohttp.WSMsgType.TEXT:
        return False
    while True:
        try:
            msg = await ws.receive(timeout=_SWEEP_COALESCE_S)
        except TimeoutError:
            return True
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return True  # report this change; the next call sees the close


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _download_target(dest: Path, name: str) -> Path:
    return dest / Path(name).name if dest.is_dir() else dest


class LogStream:
    """Async iterator over `LogLine`s; reconnects and resumes after the last line yielded."""

    def __init__(
        self, client: GateQueueClient, job_id: str, *, follow: bool, from_seq: int
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.follow = follow
        self.next_seq = from_seq
        self.end: LogEnd | None = None
        self.reconnects = 0
        self._buffer: deque[LogLine] = deque()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._done = False
        self._failures = client._failures()

    def pending(self) -> int:
        """Lines received and not yet yielded: 0 means the next line may take a while
        (a consumer can flush its output then rather than after every line)."""
        return len(self._buffer)

    def __aiter__(self) -> LogStream:
        return self

    async def __anext__(self) -> LogLine:
        while not self._buffer:
            if self._done:
                await self.aclose()
                raise StopAsyncIteration
            if self.follow:
                await self._receive()
            else:
                await self._read_page()
        line = self._buffer.popleft()
        self.next_seq = line.seq + 1
        return line

    async def aclose(self) -> None:
        self._done = True
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> LogStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _take(self, seq: int, stream: str, lines: list[str]) -> None:
        """Queue lines not yet seen; a resumed stream may repeat what was already queued."""
        expected = self._buffer[-1].seq + 1 if self._buffer else self.next_seq
        for i, line in enumerate(lines):
            s = seq + i
            if s >= expected:
                self._buffer.append(LogLine(s, stream, line))
                expected = s + 1

    async def _read_page(self) -> None:
        start = self._buffer[-1].seq + 1 if self._buffer else self.next_seq
        body = await self.client._request(
            "GET",
            GateQueueClient._job_path(self.job_id) + "/logs",
            params={"from": start, "limit": 10_000},
        )
        for batch in body["batches"]:
            self._take(batch["seq"], batch["stream"], batch["lines"])
        if not body["batches"]:
            self._done = True

    async def _receive(self) -> None:
        if self._ws is None:
            await self.connect()
            return
        msg = await self._ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "lines":
                self._failures.reset()
                self._take(data["seq"], data["stream"], data["lines"])
            elif kind == "end":
                self.end = LogEnd(
                    data["status"], data.get("exitCode"), data.get("error"), data.get("seq")
                )
                self._done = True
            return
        # Closed or broken: resume unless the server said there is nothing more to send.
        code = self._ws.close_code
        reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE else None
        error = self._ws.exception()
        await self._ws.close()
        self._ws = None
        if code in _PERMANENT_CLOSE_CODES:
            raise GateQueueError(
                f"the log of job {self.job_id} cannot be followed: {reason or code}",
                status=code,
                code="ws_closed",
            )
        if code is not None and code not in _RESUMABLE_CLOSE_CODES and error is None:
            self._done = True  # a normal close without an end message: job deleted
            return
        self.reconnects += 1
        await self.client._pause(
            self._failures, error or ConnectionError(f"closed with {code}: {reason or ''}")
        )

    async def connect(self) -> None:
        """Open the WebSocket now rather than on the first iteration: from then on no line
        written is missed, which matters to a caller that starts the writing itself."""
        if self._ws is not None or not self.follow:
            return
        start = self._buffer[-1].seq + 1 if self._buffer else self.next_seq
        try:
            self._ws = await self.client._connect_ws(
                GateQueueClient._job_path(self.job_id) + "/logs/ws", {"from": start}
            )
        except GateQueueConnectionError as exc:
            await self.client._pause(self._failures, exc)
        except GateQueueError as exc:
            raise await self.client._explain_refusal(self.job_id, exc) from None
