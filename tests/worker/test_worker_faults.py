"""Replica-set faults at the wire (tests/wire_proxy.py): a write applied whose reply is lost,
followed by an election-like refusal longer than the driver's single retry; an outage
shorter than the lease. Each must cost nothing: the job ends Succeeded on its first attempt,
its files downloadable, each epoch's metrics stored once. An outage longer than the lease
while the network is being saved ends the attempt: the job is re-run, and no file or chunk
of the first attempt is left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wire_proxy import WireProxy
from worker_helpers import TINY_HP, MakeWorker, finished, insert, log_text, trainer, wait_job

from service.jobs.record import JobRecord
from service.jobs.status import Status
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET

# The workers' driver gives up on a server after 1 s (the default is 10 s): a refusal of a
# few seconds is then "longer than the driver's single retry waits", as an election is.
SELECTION_MS = 1000
OUTAGE_S = 3.0


def _set_stage(body: dict[str, Any]) -> dict[str, Any]:
    update = body.get("update")
    return update[0].get("$set", {}) if isinstance(update, list) and update else {}


def is_claim(body: dict[str, Any]) -> bool:
    return body.get("query", {}).get(
        "status"
    ) == Status.PENDING.value and "attemptId" in _set_stage(body)


def is_renewal(body: dict[str, Any]) -> bool:
    stage = _set_stage(body)
    return "leaseExpiresAt" in stage and "status" not in stage


def is_final(status: Status) -> Callable[[dict[str, Any]], bool]:
    return lambda body: _set_stage(body).get("status") == {"$literal": status.value}


async def _worker(make_worker: MakeWorker, proxy: WireProxy, **options: Any) -> Any:
    options.setdefault("trainer_cmd", trainer("steady"))
    options.setdefault("lease_s", 10.0)
    options.setdefault("renew_every_s", 0.5)
    return await make_worker(uri=proxy.uri(serverSelectionTimeoutMS=SELECTION_MS), **options)


async def _assert_clean_success(store: Store, done: JobRecord) -> None:
    epochs = done.hyperparameters["epochs"]
    assert done.status == "Succeeded", done.error
    assert done.attempt == 1
    [artifact] = [a for a in done.artifacts if a.name == "network.json"]
    stream = await store.files.open(artifact.bucket, artifact.fileId)
    assert f'"epochs": {epochs}'.encode() in await stream.read()
    metrics = await store.metrics.list(done.id)
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    lines = await log_text(store, done.id)
    assert not [ln for ln in lines if "lease expired" in ln or "re-queued" in ln or "refused" in ln]


async def test_claim_applied_reply_lost_then_an_election(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """Before: the retry of the claim found version 0 gone, took it as "another worker won",
    and the job sat Running with nobody running it until its lease expired (attempt 2)."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(make_worker, proxy)
        lost = proxy.lose_reply("findAndModify", where=is_claim, then_refuse=OUTAGE_S)
        job = await insert(store, {**TINY_HP, "epochs": 6})
        done = await wait_job(store, job.id, finished, deadline_s=60)
        assert lost.hits == 1 and proxy.stats["refused"] > 0
    await _assert_clean_success(store, done)


async def test_lease_renewal_applied_reply_lost_then_an_election(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """Before: the renewal's retry carried the old version, failed, and the worker killed a
    healthy run ("lease renewal lost the race"); attempt 2 started from epoch 0."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(make_worker, proxy)
        job = await insert(store, {**TINY_HP, "epochs": 6})
        await wait_job(store, job.id, lambda j: j.status is Status.RUNNING)
        lost = proxy.lose_reply("findAndModify", where=is_renewal, then_refuse=OUTAGE_S)
        done = await wait_job(store, job.id, finished, deadline_s=60)
        assert lost.hits == 1 and proxy.stats["refused"] > 0
    await _assert_clean_success(store, done)


async def test_final_write_applied_reply_lost_then_an_election(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """Before: the retry read as "the job changed hands" and the files of a job that did
    succeed were deleted."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(make_worker, proxy)
        lost = proxy.lose_reply(
            "findAndModify", where=is_final(Status.SUCCEEDED), then_refuse=OUTAGE_S
        )
        job = await insert(store, {**TINY_HP, "epochs": 6})
        done = await wait_job(store, job.id, finished, deadline_s=60)
        assert lost.hits == 1
        # Past the refusal the worker settles its write by a re-read: the files stay.
        await proxy.wait_for("refusal_ended")
    await _assert_clean_success(store, done)


async def test_an_outage_shorter_than_the_lease_costs_nothing(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """Before: a 6 s restart under a 10 s lease still cost the run its lease (the log sink
    gave up after ~3 s and failed the run)."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(
            make_worker,
            proxy,
            lease_s=30.0,
            renew_every_s=10.0,
            env=_env(GQ_EPOCH_S="0.5"),
        )
        job = await insert(store, {**TINY_HP, "epochs": 12})
        await wait_job(store, job.id, lambda j: (j.latestMetrics or {}).get("epoch", 0) >= 2)
        proxy.refuse(6.0)
        await proxy.wait_for("refusal_ended")
        done = await wait_job(store, job.id, finished, deadline_s=60)
    await _assert_clean_success(store, done)


def is_network_chunk(body: dict[str, Any]) -> bool:
    """The first GridFS write of the trained network: its chunks (the document comes last)."""
    return body.get("insert") == f"{ARTIFACTS_BUCKET}.chunks"


async def _assert_files_are_the_jobs(store: Store, done: JobRecord) -> None:
    """The bucket holds exactly the job's files, each once, and no chunk of any other."""
    db = store.db
    files = await db[f"{ARTIFACTS_BUCKET}.files"].find({}, {"_id": 1}).to_list()
    assert sorted(f["_id"] for f in files) == sorted(a.fileId for a in done.artifacts)
    chunk_owners = await db[f"{ARTIFACTS_BUCKET}.chunks"].distinct("files_id")
    assert sorted(chunk_owners) == sorted(a.fileId for a in done.artifacts)
    for artifact in done.artifacts:
        stream = await store.files.open(artifact.bucket, artifact.fileId)
        assert len(await stream.read()) == artifact.length


async def test_an_outage_while_the_network_is_saved_shorter_than_the_lease_costs_nothing(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """Before: the first chunk of network.json was stored, its reply lost, MongoDB refused
    for 4 s of a 10 s lease, and the run ended Failed ("the trained network could not be
    saved") with exit code 0 and no files."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(make_worker, proxy)
        lost = proxy.lose_reply("insert", where=is_network_chunk, then_refuse=4.0)
        job = await insert(store, {**TINY_HP, "epochs": 3})
        done = await wait_job(store, job.id, finished, deadline_s=60)
        assert lost.hits == 1 and proxy.stats["refused"] > 0
    await _assert_clean_success(store, done)
    await _assert_files_are_the_jobs(store, done)  # the half-written first try was replaced


async def test_an_outage_while_the_network_is_saved_longer_than_the_lease_re_runs_the_job(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """The lease really lapsed: attempt 1 writes nothing more (no Failed), its lease expires,
    attempt 2 succeeds, and the chunk attempt 1 had written is gone. Before: Failed at once."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        await _worker(make_worker, proxy, lease_s=3.0)
        lost = proxy.lose_reply("insert", where=is_network_chunk, then_refuse=8.0)
        job = await insert(store, {**TINY_HP, "epochs": 3})
        done = await wait_job(store, job.id, finished, deadline_s=90)
        assert lost.hits == 1 and proxy.stats["refused"] > 0
    assert done.status == "Succeeded", done.error
    assert done.attempt == 2
    lines = await log_text(store, done.id)
    assert not [ln for ln in lines if "could not be saved" in ln]
    await _assert_files_are_the_jobs(store, done)


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, **extra}
