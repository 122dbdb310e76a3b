"""Sweeps from the client and from the `gatequeue` command, against the real API and a real
worker: submit, follow to the end, the best run, cancel; `gatequeue sweep --wait` in a
pseudo-terminal leaves one progress bar and the runs' table on the screen."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pyte
import pytest
from live_helpers import TINY_JOB, LiveApi, gatequeue

from service.client import GateQueueClient, GateQueueError
from service.worker import Worker

GRID = {"gates": [40, 80, 160], "learningRate": [0.01, 0.03]}


async def test_client_submits_follows_and_cancels_sweeps(
    live_api: LiveApi, client: GateQueueClient, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.05"})
    with pytest.raises(GateQueueError) as refused:
        await client.submit_sweep(base=TINY_JOB, grid={"gates": [40, 5]})
    assert refused.value.status == 422 and refused.value.code == "invalid_combination"
    assert refused.value.body["error"]["combination"]["values"] == {"gates": 5}

    sweep = await client.submit_sweep(
        base=TINY_JOB, grid=GRID, max_parallel=1, name="lr x gates", idempotency_key="k1"
    )
    assert (sweep["total"], sweep["varying"]) == (6, ["gates", "learningRate"])
    again = await client.submit_sweep(
        base=TINY_JOB, grid=GRID, max_parallel=1, name="lr x gates", idempotency_key="k1"
    )
    assert again["id"] == sweep["id"]
    seen: list[int] = []
    async for update in client.watch_sweep(sweep["id"]):
        seen.append(update["total"] - update["remaining"])
        assert update["running"] <= 1
    assert seen[-1] == 6 and seen == sorted(seen)
    final = await client.wait_sweep(sweep["id"], timeout_s=30)
    assert final["status"] == "Finished" and final["counts"]["Succeeded"] == 6
    # the paced trainer's accuracy grows with gates and learning rate: the last run is best
    assert final["best"]["options"] == {"gates": 160, "learningRate": 0.03}
    page = await client.list(sweep=sweep["id"], limit=100)
    assert len(page) == 6
    listed = await client.sweeps()
    assert [s["id"] for s in listed] == [sweep["id"]]

    doomed = await client.submit_sweep(base={**TINY_JOB, "epochs": 1000}, grid=GRID)
    result = await client.cancel_sweep(doomed["id"])
    assert result["cancelled"] + result["stopping"] == 6
    ended = await client.wait_sweep(doomed["id"], timeout_s=30)
    assert ended["status"] == "Cancelled" and ended["counts"]["Cancelled"] == 6


async def test_sweep_flags_are_checked_before_the_request(live_api: LiveApi) -> None:
    base = ["--gate-optimizer", "softmax", "--gates", "40", "--network-layers", "1"]
    for flags, message in (
        (["--grid", "gates=40,1e3"], "gates: '1e3' is not an integer"),
        (["--grid", "gatez=1,2"], "'gatez' is no option of a job"),
        (["--random", "3"], "--random N and --space go together"),
        (["--random", "2", "--space", "learningRate=cube:1:2"], "the kind is one of"),
    ):
        rc, _, err = await gatequeue(live_api.url, "sweep", *base, *flags)
        assert rc == 2 and message in err, err
    rc, _, err = await gatequeue(live_api.url, "sweep", *base, "--grid", "gates=40,5")
    assert rc == 2 and "combination 1 (gates=5)" in err, err
    assert await live_api.store.jobs.collection.count_documents({}) == 0


def _run_in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run a command with a pseudo-terminal as its stdout and stderr; (exit code, bytes)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks)


async def test_sweep_wait_in_a_terminal_shows_one_progress_bar_and_the_table(
    live_api: LiveApi, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    for _ in range(2):
        await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.05"})
    env = {
        **os.environ, "GATEQUEUE_API": live_api.url, "GATEQUEUE_LOG_FORMAT": "json",
        "COLUMNS": "160", "LINES": "60", "TERM": "xterm-256color",
    }  # fmt: skip
    env.pop("GATEQUEUE_API_TOKEN", None)
    argv = [
        sys.executable, "-m", "service.cli", "sweep", "--name", "cli sweep",
        "--gate-optimizer", "softmax", "--gates", "40", "--network-layers", "1",
        "--epochs", "2", "--grid", "gates=40,80,160", "--grid", "learningRate=0.01,0.03",
        "--max-parallel", "2", "--wait",
    ]  # fmt: skip
    rc, raw = await asyncio.to_thread(_run_in_pty, argv, env)
    screen = pyte.Screen(160, 60)
    stream = pyte.ByteStream(screen)
    stream.feed(raw.replace(b"\n", b"\r\n"))
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert rc == 0, "\n".join(lines)
    bars = [line for line in lines if "━" in line]
    assert len(bars) == 1, "\n".join(lines)  # redrawn in place, not printed per change
    assert "6/6" in bars[0] and "6 succeeded" in bars[0]
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    # Ranked by the validation metric (the default), the kept network's test accuracy, epoch
    # and gap beside.
    assert lines[header].split() == ["#", "gates", "learningRate", "STATUS",
                                     "val_acc_discrete", "test_acc_discrete", "KEPT", "GAP",
                                     "LIVE", "GATES", "IMAGES/S", "ID"]  # fmt: skip
    rows = lines[header + 1 : header + 7]
    assert len(rows) == 6 and all("Succeeded" in r for r in rows)
    assert rows[0].split()[1:3] == ["160", "0.03"] and rows[0].endswith("best")
    # Its circuit (the stand-in's: 160 gates, live = 80 - 100 x 0.03), and its speed.
    assert rows[0].split()[6:8] == ["2", "0.02"]  # the stand-in keeps its last epoch
    assert rows[0].split()[8:10] == ["77", f"{1e9 / 77:,.0f}"]
    values = [float(r.split()[4]) for r in rows]
    assert values == sorted(values, reverse=True)  # best first

    rc, out, _ = await gatequeue(live_api.url, "sweeps")
    assert rc == 0 and "cli sweep" in out and "6/6" in out and "Finished" in out
    sweep_id = out.split("\n")[1].split()[0]
    rc, out, _ = await gatequeue(live_api.url, "ls", "--sweep", sweep_id)
    assert rc == 0 and out.count("Succeeded") == 6
    rc, out, _ = await gatequeue(live_api.url, "sweeps", sweep_id)
    assert rc == 0 and "best" in out


async def test_gatequeue_sweep_with_asha_and_tpe(
    live_api: LiveApi, client: GateQueueClient, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """`gatequeue sweep --scheduler asha:1:2 --search tpe --trials N --wait` end to end: the
    trials made, some runs stopped early (a RUNG column), progress and compute in the
    headline; the same fields through the client."""
    rungs = os.path.join(os.path.dirname(__file__), "..", "worker", "trainers", "rungs.py")
    await start_worker(trainer_cmd=[sys.executable, str(rungs)], env=dict(os.environ))
    base = ["--gate-optimizer", "softmax", "--network-layers", "1", "--epochs", "4",
            "--gates", "40"]  # fmt: skip
    for flags, message in (
        (["--search", "tpe"], "needs --trials N"),
        (["--trials", "3"], "--trials goes with --search random or tpe"),
        (["--scheduler", "asha:2"], "expected asha, asha:R:ETA"),
    ):
        rc, _, err = await gatequeue(live_api.url, "sweep", *base, *flags)
        assert rc == 2 and message in err, err
    rc, out, err = await gatequeue(
        live_api.url, "sweep", *base, "--grid", "gates=40,50,60,70,80,90",
        "--scheduler", "asha:1:2", "--search", "tpe", "--trials", "5", "--search-seed", "3",
        "--max-parallel", "1", "--wait",
    )  # fmt: skip
    assert rc == 0, err
    assert "trials 5 done / 5 asked / 5" in out, out
    assert "RUNG" in out, out
    sweep = (await client.sweeps())[0]
    assert sweep["search"] == {"type": "tpe", "trials": 5, "seed": 3}
    assert sweep["scheduler"] == {"type": "asha", "minEpochs": 1, "reductionFactor": 2}
    assert sweep["progress"] == {"done": 5, "asked": 5, "total": 5}
    assert sweep["compute"]["gridEpochs"] == 24
    runs = (await client.sweep(sweep["id"]))["jobs"]
    ends = [(r["stoppedEarly"] or {}).get("epoch", 4) for r in runs]
    assert sweep["compute"]["epochs"] == sum(ends)
    assert sweep["compute"]["stoppedEarly"] == sum(1 for r in runs if r["stoppedEarly"])
    for run, end in zip(runs, ends, strict=True):
        assert run["epoch"] == end
        if end < 4:
            assert f"stopped e{end} (rung {[1, 2].index(end)})" in out
