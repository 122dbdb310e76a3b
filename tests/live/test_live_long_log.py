"""A 600,000-line log (72 MB, 1,200 batches): its first and last lines over HTTP at once,
every line over the WebSocket in order, and the API's memory bounded while it streams.

Before: `GET /jobs/{id}/logs?from=0&limit=10` answered 500 (`ProtocolError: Message length
(77942924) > max (48000000)`, every batch in one reply), the WebSocket tail closed with 4002
after 0 lines and its client reconnected forever, and each catch-up client cost the API
about 37 MB. The API runs in its own process here, so its resident memory is its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from live_helpers import finish, running_job

from service.client import GateQueueClient
from service.store import Store

REPO = Path(__file__).resolve().parents[2]
LINES = 600_000
PER_BATCH = 500
LINE = "x" * 100  # with its "line NNNNNN " prefix, ~120 bytes a line as a chatty trainer's


@pytest.mark.slow
async def test_a_600k_line_log_over_http_and_websocket(
    store: Store, mongo_uri: str, db_name: str
) -> None:
    job = await running_job(store)
    docs = [
        {"jobId": job.id, "seq": seq, "stream": "stdout",
         "lines": [f"line {i:06d} {LINE}" for i in range(seq, seq + PER_BATCH)]}
        for seq in range(0, LINES, PER_BATCH)
    ]  # fmt: skip
    for i in range(0, len(docs), 50):
        await store.logs.collection.insert_many(docs[i : i + 50])
    del docs
    await finish(store, job)

    env = {**os.environ, "MONGODB_URI": mongo_uri, "GATEQUEUE_DB": db_name,
           "GATEQUEUE_LOG_FORMAT": "json"}  # fmt: skip
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.api", "--port", "0", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert api.stdout is not None
        first = (await asyncio.wait_for(api.stdout.readline(), 60)).decode()
        match = re.search(r"listening on (http://\S+)/", first)
        assert match, first
        url = match.group(1)
        async with aiohttp.ClientSession() as http:
            t0 = time.perf_counter()
            async with http.get(f"{url}/jobs/{job.id}/logs?from=0&limit=10") as resp:
                assert resp.status == 200
                head = await resp.json()
            async with http.get(f"{url}/jobs/{job.id}/logs?from={LINES - 10}&limit=10") as resp:
                assert resp.status == 200
                tail = await resp.json()
            http_s = time.perf_counter() - t0
        assert [ln for b in head["batches"] for ln in b["lines"]] == [
            f"line {i:06d} {LINE}" for i in range(10)
        ]
        assert [ln for b in tail["batches"] for ln in b["lines"]] == [
            f"line {i:06d} {LINE}" for i in range(LINES - 10, LINES)
        ]
        assert tail["next"] == LINES
        assert http_s < 2.0, f"first and last 10 lines took {http_s:.2f} s"

        proc = psutil.Process(api.pid)
        baseline = proc.memory_info().rss
        peak = baseline
        expected = 0
        t0 = time.perf_counter()
        async with GateQueueClient(url) as client:
            stream = client.logs(str(job.id))
            async with stream:
                async for line in stream:
                    assert line.seq == expected
                    expected += 1
                    if expected % 20_000 == 0:
                        peak = max(peak, proc.memory_info().rss)
            assert stream.end is not None and stream.end.status == "Succeeded"
            assert stream.reconnects == 0
        ws_s = time.perf_counter() - t0
        assert expected == LINES
        growth_mb = (peak - baseline) / 2**20
        print(
            f"\n[long log] first and last 10 lines over HTTP: {http_s * 1000:.0f} ms; "
            f"{LINES:,} lines over the WebSocket in {ws_s:.1f} s; API memory growth "
            f"{growth_mb:.1f} MB (rss {baseline / 2**20:.0f} -> {peak / 2**20:.0f} MB)",
            flush=True,
        )
        assert growth_mb < 32, f"the API grew by {growth_mb:.1f} MB streaming one log"
    finally:
        api.terminate()
        await api.wait()
