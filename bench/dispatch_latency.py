"""Insert-to-claimed latency: our change-stream worker against a polling worker.

Baseline: a worker like the seed's, which asks MongoDB for Pending jobs once a second and
claims what it finds (the same compare-and-set claim). Ours: `service.worker.Worker`, woken
by the change stream. Both run one after the other on the same MongoDB (the embedded server
unless MONGODB_URI is set), each over the same schedule of jobs inserted at random
(exponential) intervals, with a no-op trainer (`true`) and the same number of slots; our
worker does everything it does for a real run (logs, lease, finish), the baseline only
claims, runs and finishes. Latency is from
just before the insert call to just after the claim returned, on one clock.

    python bench/dispatch_latency.py              # 200 jobs per worker, ~50 ms apart
    python bench/dispatch_latency.py --jobs 40    # a quick run

Goal (issue 5): our p99 <= 50 ms and >= 10x lower than polling's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from service.jobs.record import WorkerRef
from service.jobs.status import Status
from service.mongo import discovery as mongo_discovery
from service.mongo.connect import connect
from service.store import Store
from service.worker import Worker
from trainer.options import TrainingOptions

HP = TrainingOptions(gateOptimizer="softmax", gates=40, networkLayers=2, residualLayers=0,
                     epochs=1).model_dump()  # fmt: skip
NOOP_TRAINER = ["true"] if shutil.which("true") else [sys.executable, "-c", "pass"]


class Latencies:
    def __init__(self) -> None:
        self.inserted: dict[Any, float] = {}
        self.claimed: dict[Any, float] = {}
        self.all_claimed = asyncio.Event()
        self.expected = 0

    def on_claim(self, job: dict[str, Any]) -> None:
        self.claimed.setdefault(job["_id"], time.perf_counter())
        if len(self.claimed) >= self.expected:
            self.all_claimed.set()

    def ms(self) -> list[float]:
        return [(self.claimed[k] - t) * 1000 for k, t in self.inserted.items()]


async def insert_schedule(store: Store, lat: Latencies, gaps: list[float]) -> None:
    lat.expected = len(gaps)
    for gap in gaps:
        await asyncio.sleep(gap)
        job_id = _new_id()
        lat.inserted[job_id] = time.perf_counter()
        await store.jobs.collection.insert_one(_job_doc(job_id))


def _new_id() -> Any:
    from bson import ObjectId

    return ObjectId()


def _job_doc(job_id: Any) -> dict[str, Any]:
    from service.jobs.record import utcnow

    now = utcnow()
    return {
        "_id": job_id, "name": None, "status": Status.PENDING.value, "version": 0,
        "hyperparameters": HP, "createdAt": now, "updatedAt": now, "startedAt": None,
        "finishedAt": None, "worker": None, "leaseExpiresAt": None, "attempt": 0,
        "maxAttempts": 3, "cancelRequested": False, "exitCode": None, "error": None,
        "latestMetrics": None,
    }  # fmt: skip


async def run_ours(uri: str, gaps: list[float], slots: int, data_dir: Path) -> list[float]:
    client = connect(uri)
    store = Store(client, f"bench_dispatch_{uuid.uuid4().hex[:8]}")
    lat = Latencies()
    worker = Worker(
        store, worker_id="bench-changestream", slots=[str(i) for i in range(slots)],
        data_dir=data_dir, trainer_cmd=NOOP_TRAINER, on_claim=lat.on_claim,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            await worker.ready.wait()
        await insert_schedule(store, lat, gaps)
        async with asyncio.timeout(60):
            await lat.all_claimed.wait()
        return lat.ms()
    finally:
        worker.stop(now=True)
        await task
        await client.drop_database(store.db.name)
        await client.close()


async def run_polling(uri: str, gaps: list[float], slots: int, poll_s: float) -> list[float]:
    """The seed's loop: every `poll_s`, find Pending jobs and claim them while slots are free."""
    client = connect(uri)
    store = Store(client, f"bench_dispatch_{uuid.uuid4().hex[:8]}")
    await store.ensure_indexes()
    lat = Latencies()
    busy: set[asyncio.Task[None]] = set()

    async def run_job(job: dict[str, Any]) -> None:
        proc = await asyncio.create_subprocess_exec(*NOOP_TRAINER)
        rc = await proc.wait()
        await store.jobs.finish(job, Status.SUCCEEDED if rc == 0 else Status.FAILED, exit_code=rc)

    async def poller() -> None:
        while True:
            for job in await store.jobs.pending(limit=slots):
                if len(busy) >= slots:
                    break
                claimed = await store.jobs.claim(
                    job, WorkerRef(id="bench-polling", host="bench", gpu="0"), 30
                )
                if claimed is not None:
                    lat.on_claim(claimed)
                    task = asyncio.create_task(run_job(claimed))
                    busy.add(task)
                    task.add_done_callback(busy.discard)
            await asyncio.sleep(poll_s)

    task = asyncio.create_task(poller())
    try:
        await insert_schedule(store, lat, gaps)
        async with asyncio.timeout(60 + 2 * poll_s):
            await lat.all_claimed.wait()
        return lat.ms()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.gather(*busy, return_exceptions=True)
        await client.drop_database(store.db.name)
        await client.close()


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": pct(values, 50), "p99": pct(values, 99),
        "mean": statistics.fmean(values), "max": max(values),
    }  # fmt: skip


async def main_async(args: argparse.Namespace, uri: str, description: str) -> int:
    rng = random.Random(args.seed)
    gaps = [rng.expovariate(1000 / args.mean_gap_ms) for _ in range(args.jobs)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python "
          f"{platform.python_version()}; MongoDB: {description}")  # fmt: skip
    print(f"{args.jobs} jobs per worker, exponential gaps with mean {args.mean_gap_ms:g} ms, "
          f"{args.slots} slots, no-op trainer {' '.join(NOOP_TRAINER)!r}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gatequeue-bench-") as tmp:
        ours = summary(await run_ours(uri, gaps, args.slots, Path(tmp)))
    polling = summary(await run_polling(uri, gaps, args.slots, args.poll_s))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average after the runs: {load} (other processes skew the tail)")
    print(f"\n{'insert -> claimed (ms)':<34}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for name, s in ((f"polling every {args.poll_s:g} s (baseline)", polling),
                    ("change stream (ours)", ours)):  # fmt: skip
        print(f"{name:<34}{s['p50']:>9.1f}{s['p99']:>9.1f}{s['mean']:>9.1f}{s['max']:>9.1f}")
    r50, r99 = polling["p50"] / ours["p50"], polling["p99"] / ours["p99"]
    print(f"\nratio polling / ours: p50 {r50:.0f}x, p99 {r99:.0f}x")
    ok = ours["p99"] <= 50 and r99 >= 10
    print(f"goal (our p99 <= 50 ms and >= 10x lower than polling's): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--mean-gap-ms", type=float, default=50.0)
    p.add_argument(
        "--slots",
        type=int,
        default=32,
        help="slots of each worker; enough that no job waits for a free one, so "
        "the numbers are dispatch, not capacity",
    )
    p.add_argument("--poll-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    kind = "uri" if os.environ.get("MONGODB_URI") else "embedded"
    with mongo_discovery.discover(kind=kind) as mongo:
        return asyncio.run(main_async(args, mongo.uri, mongo.description))


if __name__ == "__main__":
    sys.exit(main())
