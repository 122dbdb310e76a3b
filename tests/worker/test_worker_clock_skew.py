"""Leases by the server's clock: workers whose wall clocks are a minute off (faketime, a real
shift of the process's clock) neither lose their own leases early nor expire anyone else's.

Before, a lease was `now + lease` by the claiming worker's clock and expiry was judged by
the sweeping worker's: a worker 60 s behind granted itself leases that were already over,
and a sweeper 60 s ahead expired every lease a minute early.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from worker_helpers import TINY_HP, MakeWorker, finished, insert, log_text, trainer, wait_job

from service.jobs.status import Status
from service.store import Store

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 5.0

pytestmark = pytest.mark.skipif(
    shutil.which("faketime") is None, reason="needs Debian's faketime (.ci/run installs it)"
)


async def _skewed_worker(
    stack: AsyncExitStack, name: str, skew: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **base_env,
        "GATEQUEUE_DATA_DIR": str(tmp_path / name),
        # Only the wall clock moves: a machine's monotonic clock is its own either way.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    out = os.open(tmp_path / f"{name}.log", os.O_WRONLY | os.O_CREAT, 0o644)
    proc = await asyncio.create_subprocess_exec(
        "faketime", "-f", skew, sys.executable, "-m", "service.worker", "--gpus", "cpu",
        "--worker-id", name,
        # The worker's clock is the one under test; its trainer runs on the machine's own
        # (libfaketime's negative offsets break the trainer's sleeps, EINVAL).
        "--trainer", shlex.join(["env", "-u", "LD_PRELOAD", "-u", "FAKETIME", *trainer("steady")]),
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    os.close(out)

    async def stop() -> None:
        # faketime runs the worker as its child: stop the whole group, not faketime alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()

    stack.push_async_callback(stop)


async def test_a_minute_of_clock_skew_expires_no_lease_early(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    base_env = {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LEASE_S": str(LEASE_S),
        "GATEQUEUE_LOG_FORMAT": "json",
        "GQ_EPOCHS": "20",
        "GQ_EPOCH_S": "0.3",
    }
    hp = {**TINY_HP, "epochs": 20}
    async with AsyncExitStack() as stack:
        await _skewed_worker(stack, "behind", "-60s", base_env, tmp_path)
        behind_job = await insert(store, hp)
        running = await wait_job(store, behind_job.id, lambda j: j.status is Status.RUNNING)
        assert running.worker is not None and running.worker.id == "behind"
        await _skewed_worker(stack, "ahead", "+60s", base_env, tmp_path)
        ahead_job = await insert(store, hp)
        running = await wait_job(store, ahead_job.id, lambda j: j.status is Status.RUNNING)
        assert running.worker is not None and running.worker.id == "ahead"
        # A worker with a true clock sweeps too, with a free slot to steal into.
        await make_worker(worker_id="true", trainer_cmd=trainer("steady"), lease_s=LEASE_S)
        done = [
            await wait_job(store, j.id, finished, deadline_s=60) for j in (behind_job, ahead_job)
        ]
    for job, owner in zip(done, ("behind", "ahead"), strict=True):
        assert job.status == "Succeeded", job.error
        assert job.attempt == 1
        assert job.worker is not None and job.worker.id == owner
        lines = await log_text(store, job.id)
        assert not [line for line in lines if "expired" in line]
