"""The client half of the `gatequeue` command, run as a user runs it: a subprocess talking
to the real API (and, for `--wait`, a real worker with the paced stand-in trainer)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable

from live_helpers import LiveApi, finish, gatequeue, running_job, write_lines

from service.worker import Worker

TINY = ["--gate-optimizer", "entmax", "--gates", "40", "--network-layers", "1"]


async def test_submit_ls_show_cancel(live_api: LiveApi) -> None:
    rc, out, err = await gatequeue(live_api.url, "submit", *TINY, "--name", "from the cli")
    assert rc == 0, err
    job_id = out.strip()
    assert len(job_id) == 24
    job = await live_api.store.jobs.get(job_id)
    assert job is not None
    assert job.hyperparameters["gateOptimizer"] == "entmax"
    assert job.hyperparameters["gates"] == 40
    assert job.name == "from the cli"

    rc, out, _ = await gatequeue(live_api.url, "ls")
    assert rc == 0
    assert job_id in out
    assert "Pending" in out
    rc, out, _ = await gatequeue(live_api.url, "ls", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [job_id]
    rc, out, _ = await gatequeue(live_api.url, "show", job_id)
    assert rc == 0
    assert "from the cli" in out
    assert "gateOptimizer=entmax" in out

    rc, out, _ = await gatequeue(live_api.url, "cancel", job_id)
    assert (rc, job_id in out, "Cancelled" in out) == (0, True, True)
    rc, _, err = await gatequeue(live_api.url, "cancel", job_id)
    assert rc == 2
    assert "409" in err
    assert "already finished" in err


async def test_refusals_and_unreachable_api(live_api: LiveApi) -> None:
    rc, _, err = await gatequeue(live_api.url, "submit", *TINY, "--gates", "0")
    assert rc == 2
    assert "gates" in err
    rc, _, err = await gatequeue(live_api.url, "show", "0" * 24)
    assert rc == 2
    assert "no job" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        rc, _, err = await gatequeue(f"http://127.0.0.1:{port}", "ls")
    assert rc == 3
    assert "cannot reach" in err


async def test_logs_and_logs_follow(live_api: LiveApi) -> None:
    store = live_api.store
    job = await running_job(store)
    job_id = str(job.id)
    await write_lines(store, job, [f"hello {i}" for i in range(5)], batch=2)
    rc, out, _ = await gatequeue(live_api.url, "logs", job_id)
    assert (rc, out.splitlines()) == (0, [f"hello {i}" for i in range(5)])
    follow = asyncio.create_task(gatequeue(live_api.url, "logs", "-f", job_id, "--from", "3"))
    await live_api.live.wait_for_tails(job_id, 1)
    await write_lines(store, job, ["and more"], batch=1, seq=5)
    await finish(store, job)
    rc, out, err = await follow
    assert out.splitlines() == ["hello 3", "hello 4", "and more"]
    assert "job Succeeded" in err
    assert rc == 0


async def test_submit_wait_exits_by_outcome(
    live_api: LiveApi, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.05"})
    rc, out, err = await gatequeue(live_api.url, "submit", *TINY, "--epochs", "3", "--wait")
    assert rc == 0, err
    assert "Succeeded" in out
    assert "test_acc=" in out
    assert "epoch 3/3" in err  # the progress bar's last state
    rc, out, err = await gatequeue(
        live_api.url, "submit", *TINY, "--epochs", "3", "--seed", "666", "--wait"
    )
    assert rc == 1, err
    assert "Failed" in out
    assert "diverged" in out


async def test_usage(live_api: LiveApi) -> None:
    """`gatequeue usage`: the open API's jobs (submitted by nobody named) by status, as a
    table and as the API's JSON; a bad `--since` is refused naming it."""
    rc, out, err = await gatequeue(live_api.url, "submit", *TINY)
    assert rc == 0, err
    rc, out, err = await gatequeue(live_api.url, "usage", "--json")
    assert rc == 0, err
    report = json.loads(out)
    (row,) = report["users"]
    assert row["user"] is None and row["jobs"]["Pending"] == 1
    assert row["slotHours"] == {"gpu": 0.0, "cpu": 0.0}
    rc, out, err = await gatequeue(live_api.url, "usage", "--since", "2020-01-01")
    assert rc == 0, err
    assert "usage since 2020-01-01T00:00:00.000Z" in out and "1 Pending" in out
    rc, _, err = await gatequeue(live_api.url, "usage", "--since", "last week")
    assert rc == 2 and "since" in err


async def test_submit_notify_is_checked_by_the_api(live_api: LiveApi) -> None:
    """`--notify URL` becomes the job's `notify`; this API has webhooks off: refused."""
    rc, _, err = await gatequeue(live_api.url, "submit", *TINY, "--notify", "https://x.example/h")
    assert rc == 2 and "webhooks are off" in err
    rc, _, err = await gatequeue(live_api.url, "submit", *TINY, "--notify", '{"url": 1')
    assert rc == 2 and "--notify" in err
