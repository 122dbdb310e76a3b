"""The fault soak (docs/reliability.md, "Soak"): workers in their own processes, each behind
its own wire proxy (tests/wire_proxy.py), run short jobs while random faults are injected:
replies lost after the write was applied, outages (also one starting while a network is
being saved), connection resets, worker SIGKILL and SIGSTOP, trainer SIGKILL, change-log
trims. At the end the invariants are checked:

- every job reached one final state;
- no two attempts of a job ran at the same time (from the trainers' heartbeats);
- every Succeeded job's listed files download;
- every job's log tiles its `seq` (no gap, no overlap);
- no job was left Pending while the workers were idle (all final once faults stop);
- no job used more attempts than its `maxAttempts`.

The files left in the artifacts bucket that no job lists, and the chunks without a file, are
counted (not violations: a worker SIGKILLed mid-upload leaves its chunks behind).

Used by tests/test_soak.py (bounded, in CI) and bench/soak.py (longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bson import ObjectId
from wire_proxy import WireProxy

from service.jobs.record import new_job
from service.jobs.status import Status
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET

REPO = Path(__file__).resolve().parents[1]
STEADY = REPO / "tests" / "worker" / "trainers" / "steady.py"
HP = {"gateOptimizer": "softmax", "gates": 40, "networkLayers": 1, "grouping": 10,
      "epochs": 3, "dataset": "digits"}  # fmt: skip
WRITE_COMMANDS = ("findAndModify", "insert", "update", "getMore", "find", "aggregate")


@dataclass
class SoakConfig:
    jobs: int = 100
    workers: int = 3
    lease_s: float = 3.0
    fault_every_s: tuple[float, float] = (0.2, 1.0)
    outage_s: tuple[float, float] = (2.0, 6.0)
    inject_for_s: float = 60.0
    settle_s: float = 120.0
    max_attempts: int = 10
    epochs: int = 8
    epoch_s: float = 0.1
    seed: int = 0


@dataclass
class WorkerProc:
    name: str
    proxy: WireProxy
    env: dict[str, str]
    log: Path
    proc: asyncio.subprocess.Process | None = None
    stopped: bool = False

    async def start(self) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id",
                self.name, "--trainer", shlex.join([sys.executable, str(STEADY)]),
                cwd=REPO, env=self.env, stdout=fd, stderr=fd,
            )  # fmt: skip
        finally:
            os.close(fd)
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def trainers(self) -> list[psutil.Process]:
        if not self.alive:
            return []
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if _is_steady(c)]

    async def close(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        await self.proc.wait()


def _is_steady(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(part.endswith("steady.py") for part in proc.cmdline())
    return False


@dataclass
class SoakReport:
    jobs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)
    orphan_files: int = 0
    orphan_chunks: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"jobs: {self.jobs} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
            + ")",
            "attempts per job: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.attempts.items())),
            "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"violations: {len(self.violations)}",
            *(f"  - {v}" for v in self.violations),
            f"unlisted files: {self.orphan_files}, chunks without a file: {self.orphan_chunks}",
            f"wall time: {self.seconds:.0f} s",
        ]


async def run_soak(store: Store, mongo_uri: str, workdir: Path, config: SoakConfig) -> SoakReport:
    rng = random.Random(config.seed)
    report = SoakReport(jobs=config.jobs)
    ledger = workdir / "ledger"
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        workers: list[WorkerProc] = []
        for i in range(config.workers):
            proxy = await stack.enter_async_context(WireProxy.for_uri(mongo_uri))
            name = f"soak-w{i + 1}"
            env = {
                **os.environ,
                "MONGODB_URI": proxy.uri(serverSelectionTimeoutMS=1000),
                "GATEQUEUE_DB": store.db.name,
                "GATEQUEUE_LEASE_S": str(config.lease_s),
                "GATEQUEUE_DATA_DIR": str(workdir / name),
                "GATEQUEUE_LOG_FORMAT": "json",
                "GQ_TEST_LEDGER": str(ledger),
                "GQ_EPOCH_S": str(config.epoch_s),
            }
            worker = WorkerProc(name, proxy, env, workdir / f"{name}.log")
            await worker.start()
            stack.push_async_callback(worker.close)
            workers.append(worker)
        ids = await _submit(store, config)
        await _inject(store, workers, config, rng, report)
        for worker in workers:  # heal everything: the fleet must now finish on its own
            worker.proxy.heal()
            if worker.stopped:
                worker.signal(signal.SIGCONT)
                worker.stopped = False
            if not worker.alive:
                await worker.start()
        await _settle(store, ids, config.settle_s)
        await _check(store, ids, ledger, config, report)
    report.seconds = time.monotonic() - started
    return report


async def _submit(store: Store, config: SoakConfig) -> list[ObjectId]:
    ids = []
    for _ in range(config.jobs):
        job = new_job(
            {**HP, "epochs": config.epochs}, {"name": None, "maxAttempts": config.max_attempts}
        )
        await store.jobs.insert(job)
        ids.append(job.id)
    return ids


async def _unfinished(store: Store, ids: list[ObjectId]) -> int:
    return await store.jobs.collection.count_documents(
        {"_id": {"$in": ids}, "status": {"$in": [Status.PENDING.value, Status.RUNNING.value]}}
    )


async def _inject(
    store: Store,
    workers: list[WorkerProc],
    config: SoakConfig,
    rng: random.Random,
    report: SoakReport,
) -> None:
    """Random faults until the time is up or every job is final."""
    ids = [oid async for oid in _ids(store)]
    deadline = time.monotonic() + config.inject_for_s
    while time.monotonic() < deadline and await _unfinished(store, ids):
        await asyncio.sleep(rng.uniform(*config.fault_every_s))
        worker = rng.choice(workers)
        kind = rng.choice(
            ["lost_reply", "lost_reply_then_election", "outage", "outage_during_upload", "reset",
             "worker_sigkill", "worker_sigstop", "trainer_sigkill", "trim"]
        )  # fmt: skip
        if kind == "lost_reply":
            worker.proxy.lose_reply(rng.choice(WRITE_COMMANDS))
        elif kind == "lost_reply_then_election":
            worker.proxy.lose_reply(
                rng.choice(WRITE_COMMANDS), then_refuse=rng.uniform(*config.outage_s)
            )
        elif kind == "outage":
            worker.proxy.refuse(rng.uniform(*config.outage_s))
        elif kind == "outage_during_upload":  # armed until that worker next saves a network
            worker.proxy.lose_reply(
                "insert", where=_is_network_chunk, then_refuse=rng.uniform(*config.outage_s)
            )
        elif kind == "reset":
            worker.proxy.reset_all()
        elif kind == "worker_sigkill":
            if not worker.alive:
                continue
            worker.signal(signal.SIGKILL)
            assert worker.proc is not None
            await worker.proc.wait()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await worker.start()
        elif kind == "worker_sigstop":
            if not worker.alive or worker.stopped:
                continue
            worker.signal(signal.SIGSTOP)
            worker.stopped = True
            await asyncio.sleep(config.lease_s * rng.uniform(1.2, 2.0))  # past its lease
            worker.signal(signal.SIGCONT)
            worker.stopped = False
        elif kind == "trainer_sigkill":
            running = worker.trainers()
            if not running:
                continue
            with contextlib.suppress(psutil.Error):
                rng.choice(running).kill()
        elif kind == "trim":
            await store.client.admin.command({"gatequeueTrimChangeLog": 1, "keep": 0})
        report.faults[kind] += 1


def _is_network_chunk(body: dict[str, Any]) -> bool:
    return body.get("insert") == f"{ARTIFACTS_BUCKET}.chunks"


async def _ids(store: Store) -> Any:
    async for doc in store.jobs.collection.find({}, {"_id": 1}):
        yield doc["_id"]


async def _settle(store: Store, ids: list[ObjectId], timeout_s: float) -> None:
    """Until every job is final (re-counted on each job change), or `timeout_s`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            async with await store.jobs.collection.watch(max_await_time_ms=500) as stream:
                while await _unfinished(store, ids):
                    await stream.try_next()


def _intervals(ledger: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """job id -> attempt id -> (first heartbeat, last heartbeat) of its trainer."""
    runs: dict[str, dict[str, list[float]]] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            job, attempt, at = parts[0], parts[1], float(parts[2])
            span = runs.setdefault(job, {}).setdefault(attempt, [at, at])
            span[0], span[1] = min(span[0], at), max(span[1], at)
    return {j: {a: (s[0], s[1]) for a, s in by.items()} for j, by in runs.items()}


async def _check(
    store: Store, ids: list[ObjectId], ledger: Path, config: SoakConfig, report: SoakReport
) -> None:
    v = report.violations
    runs = await asyncio.to_thread(_intervals, ledger)
    for oid in ids:
        job = await store.jobs.get(oid)
        if job is None:
            v.append(f"{oid}: gone")
            continue
        report.statuses[job.status.value] += 1
        report.attempts[job.attempt] += 1
        if not job.finished:
            v.append(f"{oid}: left {job.status.value} (attempt {job.attempt})")
        if job.attempt > job.maxAttempts:  # type: ignore[attr-defined]
            v.append(f"{oid}: {job.attempt} attempts of {job.maxAttempts}")  # type: ignore[attr-defined]
        spans = sorted(runs.get(str(oid), {}).items(), key=lambda kv: kv[1][0])
        for (a1, (_, end1)), (a2, (start2, _)) in itertools.pairwise(spans):
            if start2 <= end1:
                v.append(
                    f"{oid}: attempts {a1[:8]} and {a2[:8]} overlapped by {end1 - start2:.3f} s"
                )
        if job.status is Status.SUCCEEDED:
            if not job.artifacts:
                v.append(f"{oid}: Succeeded without files")
            for art in job.artifacts:
                try:
                    stream = await store.files.open(art.bucket, art.fileId)
                    if len(await stream.read()) != art.length:
                        v.append(f"{oid}: {art.name} is short")
                except Exception as exc:
                    v.append(f"{oid}: {art.name} does not download ({exc!r})")
        expected = 0
        async for batch in store.logs.collection.find({"jobId": oid}).sort("seq", 1):
            if batch["seq"] != expected:
                v.append(f"{oid}: log seq {batch['seq']} where {expected} was next")
                break
            expected += len(batch["lines"])
    listed = [a.fileId for oid in ids if (job := await store.jobs.get(oid)) for a in job.artifacts]
    files = store.db[f"{ARTIFACTS_BUCKET}.files"]
    report.orphan_files = await files.count_documents({"_id": {"$nin": listed}})
    stored = [doc["_id"] async for doc in files.find({}, {"_id": 1})]
    chunks = store.db[f"{ARTIFACTS_BUCKET}.chunks"]
    report.orphan_chunks = await chunks.count_documents({"files_id": {"$nin": stored}})


def summary(report: SoakReport) -> str:
    return "\n".join(report.lines())


__all__: list[Any] = ["SoakConfig", "SoakReport", "run_soak", "summary"]
