"""One worker, one job at a time: every way a run can end, against a real MongoDB peer and
real trainer subprocesses (stand-ins from `trainers/`, and the real trainer once)."""

from __future__ import annotations

import asyncio
import time

import pytest
from wire_proxy import WireProxy
from worker_helpers import (
    TINY_HP,
    MakeWorker,
    eventually,
    finished,
    group_alive,
    insert,
    log_lines,
    log_text,
    logged_value,
    status_is,
    trainer,
    wait_job,
)

from service.jobs.status import Status
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET
from trainer.options import TrainingOptions


async def test_real_trainer_on_cpu_succeeds(store: Store, make_worker: MakeWorker) -> None:
    """Submit -> Succeeded, with logs, one metrics document per epoch and the saved network."""
    await make_worker()  # the default trainer command: python -m trainer
    job = await insert(store)
    done = await wait_job(store, job.id, finished, deadline_s=240)
    lines = await log_text(store, job.id)
    assert done.status == "Succeeded", (done.error, lines[-20:])
    assert done.exitCode == 0
    assert done.worker is not None
    assert (done.worker.id, done.worker.gpu) == ("w1", "cpu")
    assert done.attempt == 1
    assert lines[0] == "attempt 1 on worker w1 gpu cpu"
    metrics = await store.metrics.list(job.id)
    assert [(m["epoch"], m["epochs"]) for m in metrics] == [(1, 2), (2, 2)]
    assert all("train_loss" in m for m in metrics)
    assert [line for line in lines if line.startswith("EPOCH ")][-1].startswith("EPOCH 2/2 ")
    assert done.latestMetrics["epoch"] == 2
    assert done.latestMetrics["train_loss"] == metrics[-1]["train_loss"]
    names = {a.name for a in done.artifacts}
    assert "network.json" in names
    art = next(a for a in done.artifacts if a.name == "network.json")
    stream = await store.files.open(art.bucket, art.fileId)
    data = await stream.read()
    assert len(data) == art.length > 0
    assert data.startswith(b"{")


async def test_conv_job_on_digits_succeeds_with_a_verified_circuit(
    store: Store, make_worker: MakeWorker
) -> None:
    """A convolutional network (trainer.conv) through the queue: the stored options become
    the trainer's flags, and the run's circuit is built and verified as a dense run's."""
    await make_worker()  # the real trainer
    hp = TrainingOptions(
        gateOptimizer="softmax", gates=40, networkLayers=1, residualLayers=1, epochs=2,
        dataset="digits", grouping=10, batchSize=64, architecture="conv", convChannels="4,8",
    ).model_dump()  # fmt: skip
    job = await insert(store, hp)
    done = await wait_job(store, job.id, finished, deadline_s=240)
    lines = await log_text(store, job.id)
    assert done.status == "Succeeded", (done.error, lines[-20:])
    assert done.circuit is not None, lines[-20:]
    assert done.circuit.verified and done.circuit.disagreements == 0
    assert 0 < done.circuit.gatesLive < done.circuit.gates
    assert {"network.json", "network.v"} <= {a.name for a in done.artifacts}


async def test_stand_in_trainer_metrics_logs_and_artifacts(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=trainer("epochs"))
    job = await insert(store, {**TINY_HP, "epochs": 3})
    done = await wait_job(store, job.id, finished)
    assert done.status == "Succeeded"
    lines = await log_lines(store, job.id)
    text = [line for _, _, line in lines]
    assert text[0] == "attempt 1 on worker w1 gpu cpu"
    assert "device=cpu cuda_visible=''" in text  # a CPU slot hides every GPU
    assert ("stderr", "warming up") in {(s, line) for _, s, line in lines}
    metrics = await store.metrics.list(job.id)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["train_loss"] == 1.0 and metrics[2]["train_acc"] == 0.35
    assert "bogus" not in metrics[0]
    assert done.latestMetrics == {
        "epoch": 3, "epochs": 3, "train_loss": 0.3333, "train_acc": 0.35, "epoch_s": 0.01,
    }  # fmt: skip
    [art] = done.artifacts
    assert art.name == "network.json" and art.bucket == ARTIFACTS_BUCKET
    stream = await store.files.open(art.bucket, art.fileId)
    assert b'"epochs": 3' in await stream.read()


async def test_trainer_exiting_1_fails_with_stderr_tail(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=trainer("fail"))
    job = await insert(store)
    done = await wait_job(store, job.id, finished)
    assert done.status == "Failed"
    assert done.exitCode == 1
    error = done.error.splitlines()
    assert error[-1] == "ValueError: boom: the data set is empty"
    assert error[0] == "noise 13"  # the last 20 stderr lines
    assert len(error) == 20
    assert "artifacts" not in done
    assert "loading data" in await log_text(store, job.id)


async def test_missing_trainer_fails_the_job(store: Store, make_worker: MakeWorker) -> None:
    await make_worker(trainer_cmd=["/nonexistent/trainer"])
    job = await insert(store)
    done = await wait_job(store, job.id, finished)
    assert done.status == "Failed"
    assert "/nonexistent/trainer" in done.error


async def test_100k_lines_all_stored_in_order(store: Store, make_worker: MakeWorker) -> None:
    await make_worker(trainer_cmd=trainer("flood"))
    job = await insert(store)
    done = await wait_job(store, job.id, finished, deadline_s=120)
    assert done.status == "Succeeded"
    lines = await log_lines(store, job.id)  # also checks seq tiles the log
    stdout = [line for _, s, line in lines if s == "stdout"]
    stderr = [line for _, s, line in lines if s == "stderr"]
    assert stdout == [f"line {i}" for i in range(100_000)]
    assert stderr == [f"err {i}" for i in range(0, 100_000, 1000)]
    sizes = [len(b["lines"]) async for b in store.logs.collection.find({"jobId": job.id})]
    assert max(sizes) <= 500
    assert len(sizes) < 100_000 / 50  # batched, not a document per line


@pytest.mark.parametrize("flags", [("--exit-on-term",), ("--ignore-term",)])
async def test_cancel_running_job(
    store: Store, make_worker: MakeWorker, flags: tuple[str, ...]
) -> None:
    """Cancelled, its whole process group gone (SIGKILL after the grace if SIGTERM is
    ignored), and the log says so."""
    await make_worker(trainer_cmd=trainer("sleeper", *flags))
    job = await insert(store)
    pgid = await logged_value(store, job.id, "pgid")
    child = await logged_value(store, job.id, "child")
    assert child != pgid
    asked_at = time.perf_counter()
    outcome = await store.jobs.request_cancel(job.id)
    assert outcome.outcome.value == "requested"
    done = await wait_job(store, job.id, finished, deadline_s=10)
    print(
        f"\n[cancel] {flags[0]}: request -> Cancelled in "
        f"{(time.perf_counter() - asked_at) * 1000:.0f} ms (SIGKILL grace 1 s)"
    )
    assert done.status == "Cancelled"
    assert done.cancelRequested is True
    assert group_alive(pgid) == []
    lines = await log_text(store, job.id)
    assert any(line.startswith("cancelled on request") for line in lines)


async def test_cancel_seen_at_renewal_when_no_event_arrives(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """The lease renewal read is the fallback path for a cancel: with the worker's change
    stream held up on the wire (its getMores get no answer), the renewal sees the flag."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        worker = await make_worker(uri=proxy.uri(), trainer_cmd=trainer("sleeper"), lease_s=1.5)
        job = await insert(store)
        await logged_value(store, job.id, "pgid")
        run = worker.runs[job.id]
        held = proxy.delay(
            3600, command="getMore", where=lambda body: body.get("collection") == "jobs"
        )
        await held.fired.wait()  # a getMore of the stream now waits for nothing
        events = worker.feed.events
        await store.jobs.collection.update_one({"_id": job.id}, {"$set": {"cancelRequested": True}})
        done = await wait_job(store, job.id, finished, deadline_s=10)
        assert done.status == "Cancelled"
        await eventually(lambda: _done(run))  # the DB may show it before the run has returned
        assert run.outcome == "Cancelled"
        assert worker.feed.events == events  # the cancel came through the renewal
        proxy.heal()


async def test_lost_lease_kills_the_run_and_writes_nothing_more(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("sleeper"), lease_s=1.5, sweep_leases=False)
    job = await insert(store, maxAttempts=1)
    pgid = await logged_value(store, job.id, "pgid")
    run = worker.runs[job.id]
    # Someone else's sweep decides the lease is gone (clock ahead): the job is failed.
    [expired] = await store.jobs.expire_leases(ahead_s=3600)
    assert expired.action == "failed"
    failed = await store.jobs.get(job.id)
    assert failed is not None
    await eventually(lambda: _done(run))
    assert run.outcome == "lost"
    assert group_alive(pgid) == []
    after = await store.jobs.get(job.id)
    assert after == failed  # untouched by the worker that lost it
    logs_before = await log_text(store, job.id)
    assert not any("cancel" in line for line in logs_before)


async def _done(run: object) -> bool:
    return getattr(run, "outcome", None) is not None


async def test_shutdown_hands_running_jobs_back(store: Store, make_worker: MakeWorker) -> None:
    worker = await make_worker(trainer_cmd=trainer("sleeper"), slots=["0", "1"])
    jobs = [await insert(store) for _ in range(2)]
    pgids = [await logged_value(store, j.id, "pgid") for j in jobs]
    worker.stop()
    for job in jobs:
        back = await wait_job(store, job.id, status_is(Status.PENDING))
        assert back.worker is None and back.leaseExpiresAt is None
        assert back.attempt == 0  # a hand-back is not held against the job
        assert "shut down" in back.error
        last = (await log_text(store, job.id))[-1]
        assert last.endswith("shut down during the run; re-queued")
    for pgid in pgids:
        assert group_alive(pgid) == []


async def test_shutdown_grace_lets_a_short_run_finish(
    store: Store, make_worker: MakeWorker
) -> None:
    """A run that ends within the grace period is finished normally, not handed back."""
    gate = asyncio.Event()
    worker = await make_worker(
        trainer_cmd=trainer("sleeper"), shutdown_grace_s=60.0, on_claim=lambda j: gate.set()
    )
    job = await insert(store)
    await gate.wait()
    pgid = await logged_value(store, job.id, "pgid")
    worker.stop()
    # The "trainer" ends on its own during the grace period (here: we end it).
    import os
    import signal

    os.killpg(pgid, signal.SIGKILL)
    done = await wait_job(store, job.id, finished)
    assert done.status == "Failed"  # exit by signal: a failure, but not a hand-back
    assert "SIGKILL" in done.error


async def test_unmappable_hyperparameters_fail_the_job(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=trainer("epochs"))
    job = await insert(store, {**TINY_HP, "notAFlag": 1})
    done = await wait_job(store, job.id, finished)
    assert done.status == "Failed"
    assert "notAFlag" in done.error
    assert done.attempt == 1
