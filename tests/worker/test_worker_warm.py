"""Warm starts (docs/worker.md, "Warm starts"): each slot forks its runs from one fork
server, and a forked run is still a run of its own: its exit code, a crash, a SIGKILL, a
cancel and the lease fence behave as for a cold one, and the server survives each of them.
Against a real MongoDB peer, with real processes and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
from worker_helpers import (
    TINY_HP,
    MakeWorker,
    eventually,
    finished,
    group_alive,
    insert,
    log_text,
    logged_value,
    pid_alive,
    trainer,
    wait_job,
)

from service.config import Settings
from service.jobs.status import Status
from service.store import Store
from service.worker import Worker
from service.worker.warm import WarmTrainer
from trainer import protocol

CRASH_SEED, SLEEP_SEED = 3, 9  # what trainers/whoami.py does with them


def _server(worker: Worker) -> int:
    pid = worker.warm["cpu"].server_pid
    assert pid is not None
    return pid


async def _run(store: Store, seed: int = 0, **kw: Any) -> Any:
    job = await insert(store, {**TINY_HP, "seed": seed}, **kw)
    return await wait_job(store, job.id, finished, deadline_s=60)


async def _parent(store: Store, job_id: Any) -> int:
    return await logged_value(store, job_id, "ppid")


async def test_ten_runs_through_one_slot_are_forked_from_one_server(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("whoami"))
    parents, pids = set(), set()
    for _ in range(10):
        done = await _run(store)
        assert done.status == Status.SUCCEEDED and done.exitCode == 0, done.error
        parents.add(await _parent(store, done.id))
        pids.add(await logged_value(store, done.id, "pid"))
    assert parents == {_server(worker)}
    assert len(pids) == 10  # ten processes of their own
    assert worker.warm["cpu"].started == 1


async def test_a_crash_and_a_sigkill_leave_the_server_up_for_the_next_run(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("whoami"))
    crashed = await _run(store, CRASH_SEED, maxAttempts=1)
    assert crashed.status == Status.FAILED and crashed.exitCode == 3
    assert "crashing on purpose" in (crashed.error or "")
    server = _server(worker)

    job = await insert(store, {**TINY_HP, "seed": SLEEP_SEED}, maxAttempts=1)
    assert await _parent(store, job.id) == server
    os.kill(await logged_value(store, job.id, "pid"), signal.SIGKILL)
    killed = await wait_job(store, job.id, finished)
    assert killed.status == Status.FAILED and killed.exitCode == -signal.SIGKILL

    assert pid_alive(server)
    after = await _run(store)
    assert after.status == Status.SUCCEEDED
    assert await _parent(store, after.id) == server
    assert worker.warm["cpu"].started == 1


async def test_a_server_killed_between_runs_is_rebuilt(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("whoami"))
    first = await _run(store)
    old = await _parent(store, first.id)
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: _gone(old))
    second = await _run(store)
    assert second.status == Status.SUCCEEDED, second.error
    new = await _parent(store, second.id)
    assert new != old and new == _server(worker)
    assert worker.warm["cpu"].started == 2


async def test_a_server_killed_mid_run_takes_its_run_along_and_is_rebuilt(
    store: Store, make_worker: MakeWorker
) -> None:
    """No run outlives its server (its parent-death signal): the run ends as killed, and
    the next run gets a new server."""
    worker = await make_worker(trainer_cmd=trainer("whoami"))
    job = await insert(store, {**TINY_HP, "seed": SLEEP_SEED}, maxAttempts=1)
    pid = await logged_value(store, job.id, "pid")
    old = await _parent(store, job.id)
    os.kill(old, signal.SIGKILL)
    killed = await wait_job(store, job.id, finished)
    assert killed.status == Status.FAILED and killed.exitCode == -signal.SIGKILL
    assert not pid_alive(pid)
    after = await _run(store)
    assert after.status == Status.SUCCEEDED, after.error
    assert await _parent(store, after.id) == _server(worker) != old


async def test_a_change_of_the_trainer_code_rebuilds_the_server(
    store: Store, make_worker: MakeWorker
) -> None:
    """The server checks the files of the trainer modules it imported before each run."""
    worker = await make_worker(trainer_cmd=trainer("whoami"))
    first = await _run(store)
    old = await _parent(store, first.id)
    module = protocol.__file__
    st = os.stat(module)
    try:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        second = await _run(store)
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second.status == Status.SUCCEEDED, second.error
    assert await _parent(store, second.id) not in (old, None)
    assert worker.warm["cpu"].started == 2
    assert not pid_alive(old)


async def test_cancel_stops_a_forked_run_and_its_group_not_the_server(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("sleeper", "--ignore-term"))
    job = await insert(store)
    pgid = await logged_value(store, job.id, "pgid")
    server = _server(worker)
    assert psutil.Process(pgid).ppid() == server  # forked, in a group of its own
    await store.jobs.request_cancel(job.id)
    done = await wait_job(store, job.id, finished, deadline_s=15)
    assert done.status == Status.CANCELLED
    assert group_alive(pgid) == []  # SIGKILL after the grace, the sleeper's child too
    assert pid_alive(server)


async def test_a_forked_run_past_its_lease_stops_itself(
    store: Store, make_worker: MakeWorker
) -> None:
    """The fence works on a forked run: its deadline comes from its environment and stdin,
    as for a cold one. The worker is made to lose the job (its lease expired by another
    worker's clock), so the trainer must stop by the deadline it was last told."""
    worker = await make_worker(trainer_cmd=trainer("whoami"), lease_s=1.5, sweep_leases=False)
    job = await insert(store, {**TINY_HP, "seed": SLEEP_SEED}, maxAttempts=1)
    pid = await logged_value(store, job.id, "pid")
    assert await _parent(store, job.id) == _server(worker)
    [expired] = await store.jobs.expire_leases(ahead_s=3600)
    assert expired.action == "failed"
    await eventually(lambda: _gone(pid), deadline_s=15)
    assert pid_alive(_server(worker))


async def test_cold_start_when_turned_off(store: Store, make_worker: MakeWorker) -> None:
    worker = await make_worker(trainer_cmd=trainer("whoami"), warm_start=False)
    assert worker.warm == {}
    done = await _run(store)
    assert done.status == Status.SUCCEEDED
    assert await _parent(store, done.id) == os.getpid()  # the worker's own child
    assert Settings.from_env({"GATEQUEUE_WARM_START": "0"}).warm_start is False
    assert Settings.from_env({}).warm_start is True


async def test_runs_start_cold_when_the_server_cannot_start(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    """A warm start is never why a run fails: here the server's directory is a file."""
    data_dir = tmp_path / "blocked"
    data_dir.mkdir()
    (data_dir / "warm").write_text("not a directory")
    worker = await make_worker(trainer_cmd=trainer("whoami"), data_dir=data_dir)
    for _ in range(2):
        done = await _run(store)
        assert done.status == Status.SUCCEEDED, done.error
        assert await _parent(store, done.id) == os.getpid()  # started cold, by the worker
    assert worker.warm["cpu"].server_pid is None


async def test_warm_and_cold_runs_of_the_real_trainer_are_identical(
    store: Store, make_worker: MakeWorker
) -> None:
    """Same seed, same metrics and the same network.json, bit for bit, forked or not."""
    results = []
    for warm in (False, True):
        worker = await make_worker(warm_start=warm, worker_id=f"warm-{warm}")
        job = await insert(store, {**TINY_HP, "seed": 7})
        done = await wait_job(store, job.id, finished, deadline_s=240)
        assert done.status == Status.SUCCEEDED, (done.error, (await log_text(store, job.id))[-20:])
        worker.stop()
        await worker.stopped.wait()
        metrics = [
            _untimed({k: v for k, v in m.items() if k not in ("_id", "jobId", "ts")})
            for m in await store.metrics.list(job.id)
        ]
        art = next(a for a in done.artifacts if a.name == "network.json")
        network = await (await store.files.open(art.bucket, art.fileId)).read()
        results.append((metrics, _untimed(json.loads(network)), done.result))
    assert len(results[0][0]) == TINY_HP["epochs"]
    assert results[0] == results[1]


async def _gone(pid: int) -> bool:
    await asyncio.sleep(0)
    return not pid_alive(pid)


def _untimed(value: Any) -> Any:
    """Without the timings (`epoch_s`, `step_ms`, `total_s`): the only numbers that differ
    between two runs of one seed, cold or warm alike."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not k.endswith(("_s", "_ms"))}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


async def test_a_forked_runs_group_exists_as_soon_as_its_pid_is_known(tmp_path: Path) -> None:
    """The worker signals a run's process group (cancel, stop, the fence) as soon as it has
    the pid: the server tells the pid only once the child leads its group. Before, a signal
    sent at once found no group in 1 of 200 spawns on a quiet machine, 129 of 200 on a busy
    one, and a cancel was lost."""
    cmd = trainer("sleeper")
    warm = WarmTrainer(cmd, dict(os.environ), cwd=tmp_path / "warm")
    assert await warm.start()
    try:
        for _ in range(200):
            proc = await warm.spawn([*cmd, "--epochs", "100"], env=dict(os.environ),
                                    cwd=tmp_path, memory_limit=None, stdin=True)  # fmt: skip
            assert proc is not None
            os.killpg(proc.pid, signal.SIGTERM)  # raises ProcessLookupError without a group
            assert await proc.wait() == -signal.SIGTERM
    finally:
        await warm.close()


def test_the_c_kernels_source_is_in_the_code_fingerprint() -> None:
    """The server loads the C++ kernel once: an edited logic_cpu.cpp makes it stale, as an
    edited module does (forked runs kept the old library while cold ones built the new)."""
    from trainer.forkserver import code_fingerprint
    from trainer.kernels import cpu

    assert str(cpu.SOURCE) in {path for path, _, _ in code_fingerprint()}
