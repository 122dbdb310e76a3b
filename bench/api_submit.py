"""POST /jobs throughput and latency against the database's own insert ceiling.

    python bench/api_submit.py [--duration 20] [--concurrency 64] [--profile out.txt]

1. A MongoDB: `MONGODB_URI` if set, else the embedded server (`gatequeue mongo`).
2. The API in its own process (`python -m service.api`), so the load generator does not
   share its event loop or its CPU time slices.
3. `--concurrency` keep-alive connections POST the seed's body for `--duration` seconds.
   The client is a few lines of asyncio streams rather than aiohttp's client: it costs
   ~10x less CPU per request, and on a small machine the load generator's CPU is taken
   from the server under test.
4. The same job documents through raw PyMongo `insert_one`, same concurrency, same
   indexes: the ceiling no API in front of this database can pass.

Prints req/s, p50 and p99 of both and the ratio API / raw. `--profile FILE` runs the API
under cProfile and writes its stats there (read them with `python -m pstats FILE`; slower, for
finding where the CPU time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.jobs.record import new_job  # noqa: E402
from service.jobs.request import SEED_BODY, JobRequest  # noqa: E402
from service.mongo import discovery as mongo_discovery  # noqa: E402
from service.mongo.connect import connect  # noqa: E402
from service.store import Store  # noqa: E402


@dataclass
class Result:
    name: str
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in phase

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<22} {self.rate:>9,.0f} req/s   p50 {self.pct(0.50):6.2f} ms   "
            f"p99 {self.pct(0.99):6.2f} ms   ({self.ok:,} ok, {self.errors} errors, "
            f"{self.seconds:.1f} s)"
        )

    def cpu_line(self) -> str:
        """CPU per request by process: on a small shared machine the rates above are set
        by who gets the cores, so this is the number to compare across machines."""
        parts = [f"{name} {secs / self.ok * 1e6:,.0f} us" for name, secs in self.cpu.items()]
        return f"{'':<22} CPU per request: " + ", ".join(parts) if self.ok else ""


# -- load generators -----------------------------------------------------------------------


async def _closed_loop(
    concurrency: int,
    duration: float,
    make_one: Callable[[], Awaitable[Callable[[], Awaitable[bool]]]],
) -> tuple[int, int, list[float], float]:
    """`concurrency` workers each doing one call after another until the deadline."""
    latencies: list[float] = []
    counts = [0, 0]
    callers = [await make_one() for _ in range(concurrency)]
    start = time.perf_counter()
    deadline = start + duration

    async def worker(call: Callable[[], Awaitable[bool]]) -> None:
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= deadline:
                return
            ok = await call()
            latencies.append(perf() - t0)
            counts[0 if ok else 1] += 1

    await asyncio.gather(*(worker(c) for c in callers))
    return counts[0], counts[1], latencies, time.perf_counter() - start


class HttpConn:
    """One keep-alive HTTP/1.1 connection sending the same POST again and again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes):
        self.reader, self.writer, self.request = reader, writer, req
        self.statuses: dict[int, int] = {}

    async def call(self) -> bool:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status == 201

    def close(self) -> None:
        self.writer.close()


async def bench_api(
    host: str, port: int, concurrency: int, duration: float, meter: CpuMeter | None = None
) -> Result:
    body = json.dumps(SEED_BODY).encode()
    request = (
        f"POST /jobs HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    conns: list[HttpConn] = []

    async def make_one() -> Callable[[], Awaitable[bool]]:
        reader, writer = await asyncio.open_connection(host, port)
        conn = HttpConn(reader, writer, request)
        conns.append(conn)
        return conn.call

    try:
        before = meter.sample() if meter else {}
        ok, errors, lat, secs = await _closed_loop(concurrency, duration, make_one)
        cpu = CpuMeter.diff(before, meter.sample()) if meter else {}
    finally:
        statuses: dict[int, int] = {}
        for conn in conns:
            for status, n in conn.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
            conn.close()
    if set(statuses) - {201}:
        print(f"  API statuses: {statuses}", file=sys.stderr)
    return Result("API POST /jobs", ok, errors, secs, lat, cpu)


async def bench_raw(
    uri: str, db_name: str, concurrency: int, duration: float, meter: CpuMeter | None = None
) -> Result:
    hyperparameters = JobRequest.model_validate(SEED_BODY).hyperparameters()
    client = connect(uri, maxPoolSize=concurrency)
    try:
        store = Store(client, db_name)
        await store.ensure_indexes()  # the same indexes the API's collection has
        jobs = store.jobs.collection

        async def make_one() -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                doc = new_job(hyperparameters, {"name": None, "maxAttempts": 3}).to_doc()
                await jobs.insert_one(doc)
                return True

            return call

        # Warm the pool so connection set-up is not timed.
        await asyncio.gather(*(store.ping() for _ in range(concurrency)))
        before = meter.sample() if meter else {}
        ok, errors, lat, secs = await _closed_loop(concurrency, duration, make_one)
        cpu = CpuMeter.diff(before, meter.sample()) if meter else {}
        return Result("raw insert_one", ok, errors, secs, lat, cpu)
    finally:
        await client.close()


# -- CPU accounting -----------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by named processes (this one, the API, the MongoDB server)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        import psutil

        self.procs: dict[str, Any] = {}
        for name, pid in pids.items():
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    self.procs[name] = psutil.Process(pid)

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                out[name] = times.user + times.system
        return out

    @staticmethod
    def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in after if k in before}


def listener_pid(uri: str) -> int | None:
    """The pid of the local process listening on the URI's port, if any (and visible)."""
    import psutil

    try:
        port = int(uri.split("://", 1)[1].split("/", 1)[0].split(",")[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


# -- orchestration -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mongodb() -> Iterator[tuple[str, str]]:
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"], "MONGODB_URI"
        return
    with mongo_discovery.discover(kind="embedded") as handle:
        yield handle.uri, handle.description


@contextlib.contextmanager
def api_process(uri: str, db_name: str, port: int, profile: Path | None) -> Iterator[int]:
    env = {
        **os.environ,
        "MONGODB_URI": uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        # The per-token quota (docs/security.md) would answer most of a flood with 429:
        # the bench measures the submission path, so the limits are set out of its reach.
        "GATEQUEUE_SUBMIT_RATE": str(10**9),
        "GATEQUEUE_MAX_PENDING": str(10**9),
    }
    env.pop("GATEQUEUE_API_TOKEN", None)
    env.pop("GATEQUEUE_TOKENS_FILE", None)
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "service.api", "--host", "127.0.0.1", "--port", str(port)]
    # The access log is rendered as in production (JSON lines) and thrown away here.
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errlog)
        try:
            _wait_ready(port, proc, errlog)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            errlog.seek(0)
            for line in errlog.read().decode(errors="replace").splitlines():
                if "job inserter closed" in line or '"level": "error"' in line:
                    print(f"  api log: {line}")


def _wait_ready(port: int, proc: subprocess.Popen[bytes], errlog: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errlog.seek(0)
            raise RuntimeError(f"the API exited: {errlog.read().decode()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            # an open API answers loopback Hosts only (docs/security.md)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready in 60 s")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}{load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the API process")
    parser.add_argument("--skip-raw", action="store_true", help="only the API phase")
    args = parser.parse_args()

    with mongodb() as (uri, description):
        print(f"machine:  {machine()}")
        print(f"mongodb:  {description}")
        print(f"load:     {args.concurrency} concurrent, {args.duration:g} s per phase")
        run_id = uuid.uuid4().hex[:8]
        api_db, raw_db = f"bench_api_{run_id}", f"bench_raw_{run_id}"
        port = _free_port()
        try:
            mongo_pid = listener_pid(uri)
            with api_process(uri, api_db, port, args.profile) as api_pid:
                if args.warmup > 0:
                    asyncio.run(bench_api("127.0.0.1", port, args.concurrency, args.warmup))
                meter = CpuMeter({"api": api_pid, "mongodb": mongo_pid, "load": os.getpid()})
                api = asyncio.run(
                    bench_api("127.0.0.1", port, args.concurrency, args.duration, meter)
                )
            print(api.line())
            print(api.cpu_line(), flush=True)
            if args.skip_raw:
                return 0
            meter = CpuMeter({"mongodb": mongo_pid, "client": os.getpid()})
            raw = asyncio.run(bench_raw(uri, raw_db, args.concurrency, args.duration, meter))
            print(raw.line())
            print(raw.cpu_line())
            print(
                f"ratio API/raw: {api.rate / raw.rate:.0%} of the raw insert rate; "
                f"p99 {api.pct(0.99):.1f} ms (goal: >= 50 % and p99 < 50 ms)"
            )
        finally:
            asyncio.run(_drop(uri, [api_db, raw_db]))
        if args.profile:
            print(f"profile:  {args.profile}")
    return 0


async def _drop(uri: str, names: list[str]) -> None:
    client = connect(uri)
    try:
        for name in names:
            await client.drop_database(name)
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(main())
