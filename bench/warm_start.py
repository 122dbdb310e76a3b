"""Claim to first EPOCH line: cold starts against warm starts, side by side.

Baseline: `GATEQUEUE_WARM_START=0`, every run a fresh `python -m trainer` (imports torch
and the trainer, loads digits, then trains). Ours: the slot's warm trainer forks each run
(service/worker/warm.py). The same worker code, one CPU slot, the real trainer, the same
small digits job run N times one after the other on the same MongoDB (the embedded server
unless MONGODB_URI is set). The clock starts when the claim returned (the worker's
`on_claim` hook) and stops when the worker reads the run's first EPOCH line from its
stdout (before it is stored), both in the worker's process. The warm trainer's own start
(once per slot) is waited for before the first job and printed apart.

    python bench/warm_start.py            # 20 runs each
    python bench/warm_start.py --runs 5   # a quick run

Goal (issue 22): warm median <= 1 s on CPU and >= 5x lower than cold.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import structlog
from api_submit import machine, mongodb

from service.jobs.options import RUN_OPTIONS
from service.jobs.record import JobRecord, new_job
from service.jobs.status import Status
from service.mongo.connect import connect
from service.store import Store
from service.worker import jobrun
from service.worker.worker import Worker
from trainer.options import TrainingOptions

HP: dict[str, Any] = TrainingOptions(
    gateOptimizer="softmax", gates=64, networkLayers=2, residualLayers=0, epochs=2,
    dataset="digits", grouping=10, batchSize=64,
).model_dump()  # fmt: skip

FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
claimed_at: dict[Any, float] = {}
first_epoch_at: dict[Any, float] = {}


def _instrument() -> None:
    """Note when the worker reads each run's first EPOCH line (wrapping JobRun._on_line)."""
    original = jobrun.JobRun._on_line

    async def on_line(self: jobrun.JobRun, stream: str, line: str) -> None:
        if stream == "stdout" and line.startswith("EPOCH ") and self.job_id not in first_epoch_at:
            first_epoch_at[self.job_id] = time.perf_counter()
        await original(self, stream, line)

    jobrun.JobRun._on_line = on_line  # type: ignore[method-assign]


def _on_claim(job: JobRecord) -> None:
    claimed_at[job.id] = time.perf_counter()


async def run_mode(uri: str, db: str, warm: bool, runs: int, data_dir: Path) -> dict[str, Any]:
    client = connect(uri)
    store = Store(client, db)
    await store.ensure_indexes()
    worker = Worker(
        store, worker_id=f"bench-{'warm' if warm else 'cold'}", slots=["cpu"],
        data_dir=data_dir, warm_start=warm, on_claim=_on_claim,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    server_s = rss_mib = None
    if warm:
        t0 = time.perf_counter()
        assert await worker.warm["cpu"].start(), "the warm trainer did not start"
        server_s = time.perf_counter() - t0
        server_pid = worker.warm["cpu"].server_pid
        assert server_pid is not None
    options = {o.name: o.default for o in RUN_OPTIONS}
    seconds = []
    for i in range(runs):
        job, _ = await store.jobs.insert(new_job({**HP, "seed": i}, options))
        await _finished(store, job.id)
        done = await store.jobs.get(job.id)
        assert done is not None and done.status == Status.SUCCEEDED, done and done.error
        seconds.append(first_epoch_at[job.id] - claimed_at[job.id])
    if warm:  # after the runs: the data set it kept included
        rss_mib = psutil.Process(server_pid).memory_info().rss / 2**20
    worker.stop()
    await task
    await client.drop_database(db)
    await client.close()
    return {"seconds": seconds, "server_s": server_s, "rss_mib": rss_mib}


async def _finished(store: Store, job_id: Any) -> None:
    """Until the job ends: its change events, the stream opened before the first read."""
    async with await store.jobs.collection.watch(
        [{"$match": {"documentKey._id": job_id}}], full_document="updateLookup"
    ) as stream:
        current = await store.jobs.get(job_id)
        if current is not None and current.finished:
            return
        async for change in stream:
            if (change.get("fullDocument") or {}).get("status") in FINAL:
                return


def _row(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return (
        f"| {name} | {len(values)} | {statistics.median(values):.3f} | {min(values):.3f} | "
        f"{q[8]:.3f} | {max(values):.3f} |"
    )


async def main_async(args: argparse.Namespace, uri: str, description: str) -> int:
    _instrument()
    print(f"machine: {machine()}; MongoDB: {description}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gq-warm-bench-") as tmp:
        for warm in (False, True):
            name = "warm" if warm else "cold"
            db = f"bench_warm_start_{name}"
            results[name] = await run_mode(uri, db, warm, args.runs, Path(tmp) / name)
    cold, warm = results["cold"]["seconds"], results["warm"]["seconds"]
    print(f"small digits run ({HP['gates']} gates x {HP['networkLayers']}, {HP['epochs']} "
          f"epochs), one CPU slot, claim -> first EPOCH line, seconds:")  # fmt: skip
    print("| start | runs | median | min | p90 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(_row("cold (GATEQUEUE_WARM_START=0)", cold))
    print(_row("warm (forked)", warm))
    ratio = statistics.median(cold) / statistics.median(warm)
    print(
        f"warm trainer start (once per slot): {results['warm']['server_s']:.2f} s; its RSS "
        f"after the runs: {results['warm']['rss_mib']:.0f} MiB"
    )
    print(f"ratio cold/warm (median): {ratio:.1f}x; goal: warm median <= 1 s and >= 5x")
    ok = statistics.median(warm) <= 1.0 and ratio >= 5
    print("goal met" if ok else "goal NOT met")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="runs per mode")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with mongodb() as (uri, where):
        return asyncio.run(main_async(args, uri, where))


if __name__ == "__main__":
    sys.exit(main())
