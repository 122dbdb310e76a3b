"""How long one large `POST /sweeps` keeps the API's event loop from anything else.

    python bench/sweep_loop_block.py [--runs 1000] [--repeat 5]

The API runs in this process (as `create_app` builds it, on a MongoDB: `MONGODB_URI`, else
the embedded server) next to a ticker that wakes every millisecond; the longest the ticker
waited past its millisecond is the longest the loop was blocked. Three ~56 KB sweeps of
`--runs` explicit runs:

- `bad value`: `runs - 1` valid runs and one with a value its option refuses (`seed: -1`);
- `bad combination`: `runs - 1` valid runs and one that breaks a rule between options
  (`residualLayers` > `networkLayers`): every combination must be checked to find it;
- `valid`: all valid, stored (201) and then removed.

Prints, per sweep, the median over `--repeat` tries of the longest block (wall clock, and
the CPU time the loop's thread spent in it: on a loaded machine the wall clock also counts
time this process waited for a CPU) and of the time to the answer.
Issue 26: a sweep was planned in one go before its 422, ~400 ms of blocked loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_submit import _free_port, machine, mongodb  # noqa: E402
from sweep_submit import BASE  # noqa: E402  (the same sweep body as the submit bench)

from service.api.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.mongo.connect import connect  # noqa: E402
from service.store import Store  # noqa: E402


def sweep_body(runs: int, last: dict[str, Any] | None) -> bytes:
    listed: list[dict[str, Any]] = [
        {"seed": i, "learningRate": 0.01, "name": f"run {i:04d}"} for i in range(runs - 1)
    ]
    listed.append(last if last is not None else {"seed": runs, "name": "last"})
    return json.dumps({"name": "block", "base": BASE, "runs": listed}).encode()


class Ticker:
    """Wakes every millisecond. `worst`: the longest it overslept (the loop was busy, or
    this process was not on a CPU: on a loaded machine that inflates it); `worst_cpu`: the
    most CPU time the loop's thread spent between two wakes (the block itself)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.worst = self.worst_cpu = 0.0

    async def run(self) -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            self.worst = max(self.worst, now - last - 0.001)
            self.worst_cpu = max(self.worst_cpu, cpu - last_cpu)
            last, last_cpu = now, cpu


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[float, float, float, int]:
    """(longest block, its CPU time, time to answer, status) of one POST."""
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.01)
    ticker.reset()
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        status = r.status
    took = time.perf_counter() - start
    await asyncio.sleep(0.01)  # the ticker wakes: a block just before the answer counts
    task.cancel()
    return ticker.worst, ticker.worst_cpu, took, status


async def bench(uri: str, runs: int, repeat: int) -> None:
    client = connect(uri)
    store = Store(client, f"bench_block_{uuid.uuid4().hex[:8]}")
    await store.ensure_indexes()
    settings = Settings(
        mongodb_uri=uri, db_name=store.db.name, submit_rate_per_min=100_000,
        max_pending=1_000_000,
    )  # fmt: skip
    runner = web.AppRunner(create_app(settings, store))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/sweeps"
    cases = {
        "bad value": sweep_body(runs, {"seed": -1}),
        "bad combination": sweep_body(runs, {"residualLayers": 5}),
        "valid": sweep_body(runs, None),
    }
    try:
        async with aiohttp.ClientSession() as session:
            await one(session, url, cases["bad value"])  # warm up
            for name, body in cases.items():
                blocks, cpus, tooks, statuses = [], [], [], set()
                for _ in range(repeat):
                    block, cpu, took, status = await one(session, url, body)
                    blocks.append(block)
                    cpus.append(cpu)
                    tooks.append(took)
                    statuses.add(status)
                    await store.jobs.collection.delete_many({})
                    await store.sweeps.collection.delete_many({})
                print(
                    f"{name:16s} {len(body) / 1024:5.1f} KiB  status {sorted(statuses)}  "
                    f"longest block {statistics.median(blocks) * 1e3:6.1f} ms "
                    f"(CPU {statistics.median(cpus) * 1e3:5.1f} ms)  "
                    f"answer {statistics.median(tooks) * 1e3:6.1f} ms  (median of {repeat})"
                )
    finally:
        await runner.cleanup()
        await client.drop_database(store.db.name)
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine:  {machine()}")
    with mongodb() as (uri, description):
        print(f"mongodb:  {description}")
        asyncio.run(bench(uri, args.runs, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
