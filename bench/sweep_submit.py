"""A 1,000-job sweep in one request against 1,000 single POST /jobs, and the claim rate of
16 simulated workers with and without `maxParallel`.

    python bench/sweep_submit.py [--jobs 1000] [--workers 16] [--concurrency 16]

1. A MongoDB (`MONGODB_URI`, else the embedded server) and the API in its own process, as
   in bench/api_submit.py.
2. Time until all jobs are stored: one `POST /sweeps` with a grid of `--jobs` combinations
   (it answers once every job is stored and let go to the workers), against `--jobs`
   `POST /jobs` of the same bodies, one after the other (a script's loop) and
   `--concurrency` at a time. Prints each and the ratios.
3. Claims: `--workers` simulated workers, each its own MongoDB client, take the sweep's
   jobs through the worker's own store calls (`pending` in claim order, the `maxParallel`
   slot, the compare-and-set claim, the final write, giving the slot back and announcing
   the next job) with no trainer in between, so what is measured is the queue. Without
   `maxParallel`, with one the workers cannot reach (16 for 16 workers: the slot's cost
   alone) and with a binding one (4). Prints claims/s and the ratios, and checks that no
   job ran twice and that the cap held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_submit import _free_port, api_process, machine, mongodb  # noqa: E402

from service.jobs.record import JobRecord, WorkerRef, new_attempt_id  # noqa: E402
from service.jobs.status import Status  # noqa: E402
from service.mongo.connect import connect  # noqa: E402
from service.store import Store  # noqa: E402
from service.sweeps.lifecycle import create_sweep  # noqa: E402
from service.sweeps.spec import SweepRequest, plan  # noqa: E402

BASE: dict[str, Any] = {
    "gateOptimizer": "softmax", "gates": 1000, "networkLayers": 4, "grouping": 10,
    "groupSumTau": 30, "residualLayers": 0, "epochs": 5,
}  # fmt: skip


def grid_for(n: int) -> dict[str, list[Any]]:
    """n combinations: seeds x learning rates."""
    rates = [0.01, 0.02, 0.05, 0.1]
    return {"learningRate": rates, "seed": list(range(n // len(rates)))}


# -- submission --------------------------------------------------------------------------


async def one_sweep(url: str, n: int) -> float:
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        body = {"name": f"bench {uuid.uuid4().hex[:6]}", "base": BASE, "grid": grid_for(n)}
        async with http.post(f"{url}/sweeps", json=body) as resp:
            assert resp.status == 201, await resp.text()
            sweep = await resp.json()
        elapsed = time.perf_counter() - t0
    assert sweep["total"] == n
    return elapsed


async def singles(url: str, n: int, concurrency: int) -> float:
    grid = grid_for(n)
    bodies = [
        {**BASE, "learningRate": lr, "seed": seed}
        for seed in grid["seed"]
        for lr in grid["learningRate"]
    ]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def submitter() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with http.post(f"{url}/jobs", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    await resp.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        return time.perf_counter() - t0


# -- claims ------------------------------------------------------------------------------


class Simulated:
    """The worker's claim path (service.worker.worker) without a trainer."""

    def __init__(self, store: Store, name: str, freed: asyncio.Condition) -> None:
        self.store = store
        self.ref = WorkerRef(id=name, host="bench", gpu="0")
        self.freed = freed
        self.ran: list[JobRecord] = []
        self.lost = 0
        self.capped = 0

    async def run(self, remaining: list[int]) -> None:
        while remaining[0] > 0:
            full: set[Any] = set()
            claimed = None
            for job in await self.store.jobs.pending(limit=9, skip_sweeps=full):
                claimed = await self._claim(job, full)
                if claimed is not None:
                    break
            if claimed is None:
                async with self.freed:  # a slot or a job comes back: the stream's wake-up
                    if remaining[0] > 0:
                        await asyncio.wait_for(self.freed.wait(), timeout=1.0)
                continue
            done = await self.store.jobs.finish(claimed, Status.SUCCEEDED, exit_code=0)
            assert done is not None
            self.ran.append(claimed)
            remaining[0] -= 1
            if claimed.sweepMaxParallel is not None and claimed.sweepId is not None:
                assert claimed.attemptId is not None
                if await self.store.sweeps.free(claimed.sweepId, claimed.attemptId):
                    await self.store.jobs.announce_next(claimed.sweepId)
            async with self.freed:
                self.freed.notify_all()

    async def _claim(self, job: JobRecord, full: set[Any]) -> JobRecord | None:
        attempt = new_attempt_id()
        capped = job.sweepId is not None and job.sweepMaxParallel is not None
        if capped:
            assert job.sweepId is not None
            if not await self.store.sweeps.reserve(
                job.sweepId, attempt, job.id, deadline=time.monotonic() + 30
            ):
                self.capped += 1
                full.add(job.sweepId)
                return None
        claimed = await self.store.jobs.claim(job, self.ref, 30.0, attempt_id=attempt)
        if claimed is None:
            self.lost += 1
            if capped:
                assert job.sweepId is not None
                await self.store.sweeps.free(job.sweepId, attempt)
        return claimed


async def claim_rate(uri: str, n: int, workers: int, max_parallel: int | None) -> dict[str, Any]:
    db = f"bench_claims_{uuid.uuid4().hex[:8]}"
    setup = Store(connect(uri), db)
    await setup.ensure_indexes()
    spec = SweepRequest.model_validate(
        {"base": BASE, "grid": grid_for(n), "maxParallel": max_parallel}
    )
    sweep = (await create_sweep(setup, plan(spec, max_jobs=n), submitted_by=None)).sweep
    clients = [connect(uri) for _ in range(workers)]
    freed = asyncio.Condition()
    sims = [Simulated(Store(c, db), f"w{i}", freed) for i, c in enumerate(clients)]
    remaining = [n]
    t0 = time.perf_counter()
    await asyncio.gather(*(s.run(remaining) for s in sims))
    elapsed = time.perf_counter() - t0
    jobs = await setup.jobs.collection.find({"sweepId": sweep.id}).to_list(None)
    assert all(j["status"] == Status.SUCCEEDED.value and j["attempt"] == 1 for j in jobs)
    ran = [j.id for s in sims for j in s.ran]
    assert len(ran) == len(set(ran)) == n, "a job ran twice, or one never ran"
    most = _most_at_once(jobs)
    if max_parallel is not None:
        assert most <= max_parallel, f"{most} ran at once with maxParallel {max_parallel}"
    await setup.client.drop_database(db)
    for c in [setup.client, *clients]:
        await c.close()
    return {
        "rate": n / elapsed, "seconds": elapsed, "lost": sum(s.lost for s in sims),
        "capped": sum(s.capped for s in sims), "most": most,
    }  # fmt: skip


def _most_at_once(jobs: list[dict[str, Any]]) -> int:
    edges = sorted([(j["startedAt"], 1) for j in jobs] + [(j["finishedAt"], -1) for j in jobs])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


# -- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    with mongodb() as (uri, where):
        print(f"machine: {machine()}")
        print(f"MongoDB: {where}")
        port = _free_port()
        # 1,000 single submissions pass the default 600 a minute per token (the limit a
        # sweep, one submission, does not meet): lifted here to time the requests alone.
        os.environ.setdefault("GATEQUEUE_SUBMIT_RATE", "1000000")
        with api_process(uri, f"bench_sweep_{uuid.uuid4().hex[:8]}", port, None):
            url = f"http://127.0.0.1:{port}"
            sweep_s = await one_sweep(url, args.jobs)
            serial_s = await singles(url, args.jobs, 1)
            parallel_s = await singles(url, args.jobs, args.concurrency)
        print(f"\nall {args.jobs} jobs stored")
        print(f"  {'one POST /sweeps':<31}{sweep_s * 1000:8.0f} ms")
        for label, seconds in (
            (f"{args.jobs} POST /jobs, one at a time", serial_s),
            (f"{args.jobs} POST /jobs, {args.concurrency} at a time", parallel_s),
        ):
            print(f"  {label:<31}{seconds * 1000:8.0f} ms   sweep: {seconds / sweep_s:.1f}x faster")

        print(f"\nclaims by {args.workers} simulated workers ({args.jobs} jobs, no trainer)")
        results = {}
        for label, cap in (("no maxParallel", None), (f"maxParallel {args.workers}", args.workers),
                           ("maxParallel 4", 4)):  # fmt: skip
            r = await claim_rate(uri, args.jobs, args.workers, cap)
            results[label] = r
            print(f"  {label:<18} {r['rate']:8.0f} claims/s   most at once {r['most']:>2}   "
                  f"lost races {r['lost']:>4}   refused by the cap {r['capped']:>5}")  # fmt: skip
        base = results["no maxParallel"]["rate"]
        for label, r in results.items():
            if label != "no maxParallel":
                print(f"  {label} / no maxParallel: {r['rate'] / base:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
