"""Claim races: our compare-and-set on `version` against the seed-style read-then-write claim.

N claimers, each with its own MongoDB client (as separate worker processes have), race over
the same Pending jobs: list a page of Pending jobs, shuffle it, try to claim each. Baseline:
the claim a queue without versioning makes, `update_one({_id}, {$set: Running})` after
reading the job as Pending, which lets two workers both believe they own a job. Ours:
`Store.claim`, the compare-and-set of docs/design.md. Both run on the same MongoDB (the embedded
server unless MONGODB_URI is set), one after the other, with the same jobs and claimers.

Prints jobs claimed per second, jobs run more than once, lost races (claims that correctly came back
empty) and the ratio of throughputs: safety should cost next to nothing.

    python bench/claim_race.py                    # 8 claimers, 500 jobs
    python bench/claim_race.py --claimers 16 --jobs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Settings
from service.jobs.record import JobRecord, WorkerRef, utcnow
from service.jobs.status import Status
from service.mongo import discovery as mongo_discovery
from service.mongo.connect import connect
from service.store import Store
from trainer.options import TrainingOptions

HP = TrainingOptions(gateOptimizer="softmax", gates=40, networkLayers=1).model_dump()

Claim = Callable[[Store, JobRecord, WorkerRef], Awaitable[bool]]


async def naive_claim(store: Store, job: JobRecord, worker: WorkerRef) -> bool:
    """Read-then-write: the job was Pending when listed, so it is taken. No version check."""
    result = await store.jobs.collection.update_one(
        {"_id": job["_id"]},
        {"$set": {"status": Status.RUNNING.value, "worker": worker.as_doc(), "updatedAt": utcnow()},
         "$inc": {"attempt": 1}},
    )  # fmt: skip
    return result.modified_count == 1


async def cas_claim(store: Store, job: JobRecord, worker: WorkerRef) -> bool:
    return await store.jobs.claim(job, worker, lease_s=30) is not None


async def race(uri: str, db: str, claim: Claim, claimers: int, jobs: int) -> dict[str, Any]:
    setup = connect(uri)
    store = Store(setup, db)
    await store.ensure_indexes()
    for _ in range(jobs):
        await store.insert_job(HP)
    clients = [connect(uri) for _ in range(claimers)]
    wins: Counter[Any] = Counter()
    lost = 0

    async def claimer(i: int) -> None:
        nonlocal lost
        own = Store(clients[i], db)
        worker = WorkerRef(id=f"w{i}", host="bench", gpu=str(i))
        while pending := await own.jobs.pending(limit=20):
            random.shuffle(pending)
            for job in pending:
                if await claim(own, job, worker):
                    wins[job["_id"]] += 1
                else:
                    lost += 1

    try:
        await asyncio.gather(*(c.admin.command("ping") for c in clients))
        t0 = time.perf_counter()
        await asyncio.gather(*(claimer(i) for i in range(claimers)))
        elapsed = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.close()
        await setup.drop_database(db)
        await setup.close()
    return {
        "jobs_per_s": len(wins) / elapsed,
        "claims_per_s": sum(wins.values()) / elapsed,
        "jobs_claimed": len(wins),
        "run_twice_or_more": sum(1 for n in wins.values() if n > 1),
        "extra_runs": sum(n - 1 for n in wins.values()),
        "lost_races": lost,
        "seconds": elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claimers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    logging.getLogger("service").setLevel(logging.WARNING)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; python {platform.python_version()}")  # fmt: skip
    # a sync context: starts the server once
    with mongo_discovery.discover(Settings.from_env().mongodb_uri) as handle:
        print(f"MongoDB: {handle.description}")
        print(f"{args.claimers} claimers, {args.jobs} jobs each run\n")
        results = {}
        for name, claim in (("read-then-write", naive_claim), ("compare-and-set", cas_claim)):
            r = await race(handle.uri, f"bench_claim_{uuid.uuid4().hex[:8]}", claim,
                           args.claimers, args.jobs)  # fmt: skip
            results[name] = r
            print(f"{name:>16}: {r['jobs_per_s']:5.0f} jobs/s ({r['seconds']:.2f} s)  "
                  f"jobs run twice or more {r['run_twice_or_more']:4d} "
                  f"(extra runs {r['extra_runs']})  lost races {r['lost_races']}")  # fmt: skip
        ratio = results["compare-and-set"]["jobs_per_s"] / results["read-then-write"]["jobs_per_s"]
        print(f"\nthroughput ours / baseline: {ratio:.2f}x; "
              f"double runs: {results['read-then-write']['extra_runs']} -> "
              f"{results['compare-and-set']['extra_runs']}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
