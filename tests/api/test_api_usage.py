"""`GET /usage` (service.store.usage): the numbers are what the jobs stored in MongoDB give
(their statuses, Running times on GPU and CPU slots, log lines and files), per user and per
sweep, over a period; an admin sees everyone, any other token itself only."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, bearer, error_of
from bson import ObjectId
from job_helpers import insert_job

from service import tokens
from service.jobs.record import iso, utcnow
from service.jobs.status import Status
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET, CHECKPOINTS_BUCKET
from service.tokens import Role

NOW = utcnow()


async def _job(
    store: Store,
    tmp_path: Path,
    *,
    user: str,
    status: Status,
    gpu: str | None = None,
    ran: tuple[float, float] | None = None,  # (started, finished) hours before NOW
    created_h: float = 6.0,
    lines: list[str] = (),  # type: ignore[assignment]
    files: dict[str, int] | None = None,  # bucket -> bytes
    sweep: ObjectId | None = None,
    finished_h: float | None = None,  # a job that ended without running
) -> ObjectId:
    """A job as a run leaves it: its record, its log lines and its files."""
    job, _ = await insert_job(store, SEED_BODY)
    fields: dict[str, Any] = {"status": status.value, "submittedBy": user,
                              "createdAt": NOW - timedelta(hours=created_h)}  # fmt: skip
    if gpu is not None:
        fields["worker"] = {"id": "w", "host": "h", "gpu": gpu}
    if ran is not None:
        fields["startedAt"] = NOW - timedelta(hours=ran[0])
        if ran[1] >= 0:
            fields["finishedAt"] = NOW - timedelta(hours=ran[1])
    if finished_h is not None:
        fields["finishedAt"] = NOW - timedelta(hours=finished_h)
    if sweep is not None:
        fields["sweepId"] = sweep
    await store.jobs.collection.update_one({"_id": job.id}, {"$set": fields})
    if lines:
        await store.logs.append(job.id, "stdout", list(lines))
    for bucket, size in (files or {}).items():
        path = tmp_path / f"{job.id}-{bucket}"
        path.write_bytes(b"x" * size)
        await store.files.upload(bucket, path, path.name, {"jobId": job.id})
    return job.id


@pytest.fixture
async def team(make_api: MakeApi, tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    path = tmp_path / "tokens.json"
    names = {"alice": Role.SUBMIT, "bob": Role.SUBMIT, "reader": Role.READ, "boss": Role.ADMIN}
    secrets = {name: tokens.add(path, name, role) for name, role in names.items()}
    return await make_api(tokens_file=path), secrets


@pytest.fixture
async def history(store: Store, tmp_path: Path) -> ObjectId:
    """alice: a Succeeded GPU run of 2 h (3 h to 1 h ago), a Failed CPU run of 1 h (5 h to
    4 h ago), a Pending job; bob: two runs of a sweep, 30 min on GPU and 1 h on CPU, and a
    Cancelled job that never ran."""
    sweep = ObjectId()
    await _job(
        store,
        tmp_path,
        user="alice",
        status=Status.SUCCEEDED,
        gpu="0",
        ran=(3, 1),
        lines=["épоch 1", "done"],
        files={ARTIFACTS_BUCKET: 1000, CHECKPOINTS_BUCKET: 300},
    )
    await _job(
        store, tmp_path, user="alice", status=Status.FAILED, gpu="cpu", ran=(5, 4), lines=["boom"]
    )
    await _job(store, tmp_path, user="alice", status=Status.PENDING, created_h=0.5)
    await _job(
        store,
        tmp_path,
        user="bob",
        status=Status.SUCCEEDED,
        gpu="1",
        ran=(2, 1.5),
        sweep=sweep,
        files={ARTIFACTS_BUCKET: 70_000},
    )
    await _job(
        store,
        tmp_path,
        user="bob",
        status=Status.SUCCEEDED,
        gpu="cpu",
        ran=(2, 1),
        sweep=sweep,
        lines=["a" * 10],
    )
    await _job(store, tmp_path, user="bob", status=Status.CANCELLED, finished_h=5.5)
    return sweep


def _statuses(**counts: int) -> dict[str, int]:
    return {s.value: counts.get(s.value, 0) for s in Status}


ALICE = {
    "user": "alice",
    "jobs": _statuses(Succeeded=1, Failed=1, Pending=1),
    "slotHours": {"gpu": 2.0, "cpu": 1.0},
    "logBytes": len("épоch 1".encode()) + len("done") + len("boom"),
    "fileBytes": 1300,
}
BOB = {
    "user": "bob",
    "jobs": _statuses(Succeeded=2, Cancelled=1),
    "slotHours": {"gpu": 0.5, "cpu": 1.0},
    "logBytes": 10,
    "fileBytes": 70_000,
}


async def test_an_admin_sees_every_user_and_sweep(
    team: tuple[TestClient, dict[str, str]], history: ObjectId
) -> None:
    api, secrets = team
    resp = await api.get("/usage", headers=bearer(secrets["boss"]))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["since"] is None
    assert body["users"] == [ALICE, BOB]
    sweep = {**BOB, "sweepId": str(history), "jobs": _statuses(Succeeded=2)}
    assert body["sweeps"] == [sweep]


async def test_others_see_themselves_only(
    team: tuple[TestClient, dict[str, str]], history: ObjectId
) -> None:
    api, secrets = team
    alice = await (await api.get("/usage", headers=bearer(secrets["alice"]))).json()
    assert alice["users"] == [ALICE] and alice["sweeps"] == []
    bob = await (await api.get("/usage", headers=bearer(secrets["bob"]))).json()
    assert bob["users"] == [BOB] and [s["sweepId"] for s in bob["sweeps"]] == [str(history)]
    reader = await (await api.get("/usage", headers=bearer(secrets["reader"]))).json()
    assert reader["users"] == [{**BOB, "user": "reader", "jobs": _statuses(),
                                "slotHours": {"gpu": 0.0, "cpu": 0.0}, "logBytes": 0,
                                "fileBytes": 0}]  # fmt: skip
    assert reader["sweeps"] == []
    await error_of(await api.get("/usage"), 401)


async def test_since_clips_running_time_and_leaves_out_what_finished_before(
    team: tuple[TestClient, dict[str, str]], history: ObjectId
) -> None:
    """Since 2 h ago: alice's GPU run counts its last hour, her CPU run (finished 4 h ago)
    not at all; her Pending job counts; bob's runs lie wholly inside."""
    api, secrets = team
    since = iso(NOW - timedelta(hours=2))
    resp = await api.get("/usage", params={"since": since}, headers=bearer(secrets["boss"]))
    body = await resp.json()
    assert body["since"] == since
    alice, bob = body["users"]
    assert alice["jobs"] == _statuses(Succeeded=1, Pending=1)
    assert alice["slotHours"] == {"gpu": 1.0, "cpu": 0.0}
    assert alice["logBytes"] == ALICE["logBytes"] - len("boom")
    assert alice["fileBytes"] == 1300
    assert bob["slotHours"] == BOB["slotHours"]
    assert bob["jobs"] == _statuses(Succeeded=2)  # the Cancelled one ended 5.5 h ago


async def test_a_running_job_counts_up_to_now(
    store: Store, api: TestClient, tmp_path: Path
) -> None:
    await _job(store, tmp_path, user="carol", status=Status.RUNNING, gpu="0", ran=(1, -1))
    body = await (await api.get("/usage")).json()  # open API: everyone
    (carol,) = body["users"]
    assert carol["jobs"] == _statuses(Running=1)
    assert carol["slotHours"]["gpu"] >= 1.0 and carol["slotHours"]["cpu"] == 0.0


async def test_a_job_handed_back_to_the_queue_is_not_running(
    store: Store, api: TestClient, tmp_path: Path
) -> None:
    """A released or expired attempt leaves the job Pending with its `startedAt`: its time
    in the queue is no slot's."""
    await _job(store, tmp_path, user="dave", status=Status.PENDING, ran=(3, -1))
    (dave,) = (await (await api.get("/usage")).json())["users"]
    assert dave["jobs"] == _statuses(Pending=1)
    assert dave["slotHours"] == {"gpu": 0.0, "cpu": 0.0}


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "2026-01-01T25:00",
                                   "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"])
async def test_a_bad_since_is_a_422_naming_it(api: TestClient, since: str) -> None:
    error = await error_of(await api.get("/usage", params={"since": since}), 422)
    assert [f["field"] for f in error["fields"]] == ["since"]
