"""Honest results end to end (issue 21): a sweep repeated over seeds and ranked by the
validation metric's mean, a collapsed run flagged, and the ETA, through the real API, real
workers running the paced stand-in (its validation accuracy is a known function of its
options and seed) and the `gatequeue` command as a user runs it."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import Awaitable, Callable

import pyte
import pytest
from live_helpers import TINY_JOB, LiveApi, gatequeue
from test_live_sweeps import _run_in_pty

from service.client import GateQueueClient
from service.jobs.status import Status
from service.worker import Worker

GRID = {"gates": [40, 80], "learningRate": [0.01, 0.03]}


async def test_a_sweep_over_seeds_ranks_combinations_by_their_mean(
    live_api: LiveApi, client: GateQueueClient, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    for _ in range(2):
        await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.02"})
    sweep = await client.submit_sweep(base=TINY_JOB, grid=GRID, seeds=3, name="seeds")
    assert (sweep["total"], sweep["metric"], sweep["warnings"]) == (12, "val_acc_discrete", [])
    final = await client.wait_sweep(sweep["id"], timeout_s=120)
    assert final["status"] == "Finished" and final["counts"]["Succeeded"] == 12
    assert final["etaS"] is None
    jobs = {j["id"]: await client.get(j["id"]) for j in final["jobs"]}
    rows = final["combinations"]
    assert len(rows) == 4
    means = []
    for row in rows:
        results = [jobs[j]["result"] for j in row["jobs"]]
        assert sorted(jobs[j]["hyperparameters"]["seed"] for j in row["jobs"]) == [0, 1, 2]
        vals = [r["val_acc_discrete"] for r in results]
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(statistics.fmean(vals))
        assert row["std"] == pytest.approx(statistics.stdev(vals))
        assert row["testAccDiscrete"] == pytest.approx(
            statistics.fmean(r["test_acc_discrete"] for r in results)
        )
        means.append(row["mean"])
    best = final["best"]
    assert best["combination"] == means.index(max(means))
    assert best["options"] == rows[best["combination"]]["options"]
    assert best["options"] == {"gates": 80, "learningRate": 0.03}  # the stand-in's best

    rc, out, err = await gatequeue(live_api.url, "sweeps", sweep["id"])
    assert rc == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    assert lines[header].split()[:5] == ["#", "gates", "learningRate", "val_acc_discrete",
                                         "(mean±std)"]  # fmt: skip
    table = [line for line in lines[header + 1 :] if line.strip()]
    assert len(table) == 4
    assert table[0].split()[1:3] == ["80", "0.03"] and "best" in table[0]
    assert f"{best['value']:.4f}±{best['std']:.4f}" in table[0] and "3/3" in table[0]


async def test_a_collapsed_run_is_flagged_and_a_running_one_shows_its_eta(
    live_api: LiveApi, client: GateQueueClient, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.2"})
    env = {
        **os.environ, "GATEQUEUE_API": live_api.url, "GATEQUEUE_LOG_FORMAT": "json",
        "COLUMNS": "80", "LINES": "40", "TERM": "xterm-256color",
    }  # fmt: skip
    env.pop("GATEQUEUE_API_TOKEN", None)
    argv = [
        sys.executable, "-m", "service.cli", "submit", "--gate-optimizer", "softmax",
        "--gates", "40", "--network-layers", "2", "--epochs", "3", "--seed", "13", "--wait",
    ]  # fmt: skip
    rc, raw = await asyncio.to_thread(_run_in_pty, argv, env)
    screen = pyte.Screen(80, 40)
    pyte.ByteStream(screen).feed(raw.replace(b"\n", b"\r\n"))
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert rc == 0, "\n".join(lines)
    bars = [line for line in lines if "━" in line]
    assert len(bars) == 1 and "epoch 3/3" in bars[0], "\n".join(lines)  # visible at 80 columns
    text = " ".join(lines)
    assert "kept epoch 3" in text and "test_acc_discrete=0.15" in text
    assert "warning (collapsed)" in text and "warning (discretization_gap)" in text
    job_id = next(line.split()[1] for line in lines if line.startswith("submitted "))

    rc, out, _ = await gatequeue(live_api.url, "show", job_id)
    assert rc == 0 and "kept epoch 3: val_acc_discrete=" in out
    assert "warning (collapsed): the network collapsed" in " ".join(out.split())
    rc, out, _ = await gatequeue(live_api.url, "ls")
    assert rc == 0 and "0.1500 !" in out

    # A long run: its ETA is in `show` and `ls` while it runs.
    job = await client.submit(**{**TINY_JOB, "epochs": 500})
    running = await _wait_for(client, job["id"], lambda j: j.get("etaS") is not None)
    assert running["status"] == Status.RUNNING and running["etaS"] > 0
    rc, out, _ = await gatequeue(live_api.url, "show", job["id"])
    assert rc == 0 and "eta" in out and "(estimated)" in out
    await client.cancel(job["id"])


async def _wait_for(
    client: GateQueueClient, job_id: str, predicate: Callable[[dict], bool]
) -> dict:
    async with asyncio.timeout(60):
        async for update in client.watch(job_id):
            if predicate(update):
                return update
    raise AssertionError("never held")  # pragma: no cover
