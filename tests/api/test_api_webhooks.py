"""Webhooks (docs/webhooks.md) against a real receiver: an aiohttp server on loopback that
records every POST. Jobs end through the store's own transitions (claim, finish), so the
API replicas learn of them as in production, from the jobs change stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, error_of, job_count
from bson import ObjectId
from job_helpers import insert_job

from service.api.keys import WEBHOOKS
from service.jobs.notify import Notify
from service.jobs.record import JobRecord, WorkerRef
from service.jobs.status import Status
from service.retry import RETRIES, Backoff
from service.store import Store
from service.store.deliveries import Delivery
from service.webhooks import payload
from service.webhooks.dispatcher import Dispatcher

SECRET = "s3cret-for-tests"
FAST = Backoff(initial_s=0.01, max_s=0.05)  # the schedule's shape, in milliseconds
LOOPBACK = ("127.0.0.1",)


@dataclass
class Receiver:
    """Answers `fail_first` POSTs with 500, then 200; every POST is recorded."""

    url: str = ""
    fail_first: int = 0
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        status = 500 if len(self.posts) <= self.fail_first else 200
        self.answered.put_nowait(status)
        return web.Response(status=status)

    async def delivered(self, n: int = 1) -> None:
        """Until `n` more POSTs were answered 200."""
        while n:
            if await self.answered.get() == 200:
                n -= 1

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield recv
    await runner.cleanup()


async def _api(make_api: MakeApi, **overrides: Any) -> TestClient:
    settings: dict[str, Any] = {"webhook_allow": LOOPBACK, "webhook_secret": SECRET}
    api = await make_api(**(settings | overrides))
    api.app[WEBHOOKS].policy = FAST  # type: ignore[index]
    return api


def _dispatcher(api: TestClient) -> Dispatcher:
    return api.app[WEBHOOKS]  # type: ignore[index]


async def _end(store: Store, job_id: str | ObjectId, status: Status) -> JobRecord:
    """A worker claims the job and writes its final status."""
    job = await store.jobs.get(ObjectId(job_id))
    assert job is not None
    claimed = await store.jobs.claim(job, WorkerRef(id="w", host="h", gpu="0"), 30)
    assert claimed is not None
    code = 0 if status is Status.SUCCEEDED else 1
    ended = await store.jobs.finish(claimed, status, exit_code=code)
    assert ended is not None
    return ended


async def _submit(api: TestClient, notify: dict[str, Any] | None) -> str:
    body = SEED_BODY if notify is None else {**SEED_BODY, "notify": notify}
    resp = await api.post("/jobs", json=body, headers=JSON)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _settled(*apis: TestClient) -> None:
    """Every replica has ended what it sends, then made one more pass: what it would send
    now, it has sent."""
    for api in apis:
        await _dispatcher(api).idle()
        await _dispatcher(api).run_once()
        await _dispatcher(api).idle()


async def test_a_receiver_gets_each_event_once_with_a_valid_signature(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    api = await _api(make_api)
    job_id = await _submit(api, {"url": receiver.url, "events": ["failed", "succeeded"]})
    shown = await (await api.get(f"/jobs/{job_id}")).json()
    port = urlsplit(receiver.url).port
    assert shown["notify"] == {"url": f"http://127.0.0.1:{port}/…",  # the path is not shown
                               "events": ["failed", "succeeded"]}  # fmt: skip
    await _end(store, job_id, Status.FAILED)
    await receiver.delivered()
    await _settled(api)

    ((headers, body),) = receiver.posts
    assert payload.verify(SECRET, body, headers[payload.SIGNATURE_HEADER])
    sent = json.loads(body)
    assert sent["event"] == "failed" and sent["job"]["id"] == job_id
    assert sent["job"]["status"] == "Failed" and sent["job"]["exitCode"] == 1
    assert sent["url"].endswith(f"/#/jobs/{job_id}")
    assert headers[payload.DELIVERY_HEADER] == sent["deliveryId"]
    assert headers[payload.EVENT_HEADER] == "job.failed"

    record = await (await api.get(f"/jobs/{job_id}/deliveries")).json()
    (delivery,) = record["deliveries"]
    assert delivery["deliveryId"] == sent["deliveryId"]
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 1)
    assert delivery["lastStatus"] == 200
    assert delivery["source"] == "notify" and "/hook" not in delivery["target"]
    text = await (await api.get("/metrics")).text()
    assert 'gatequeue_webhook_deliveries_total{outcome="delivered"} 1.0' in text


async def test_a_receiver_that_fails_twice_gets_it_on_the_third_try(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    api = await _api(make_api)
    before = RETRIES["webhook_delivery"]
    job_id = await _submit(api, {"url": receiver.url})
    await _end(store, job_id, Status.SUCCEEDED)
    await receiver.delivered()
    await _settled(api)
    assert [json.loads(b)["deliveryId"] for _, b in receiver.posts] == [
        receiver.bodies()[0]["deliveryId"]
    ] * 3  # the same delivery, three tries
    assert len({b for _, b in receiver.posts}) == 1  # the same bytes each time
    (delivery,) = (await (await api.get(f"/jobs/{job_id}/deliveries")).json())["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 3)
    assert RETRIES["webhook_delivery"] - before == 2
    text = await (await api.get("/metrics")).text()
    assert 'gatequeue_webhook_deliveries_total{outcome="retried"} 2.0' in text
    assert 'gatequeue_retries_total{operation="webhook_delivery"}' in text


async def test_a_receiver_that_never_answers_2xx_is_given_up_on(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    receiver.fail_first = 1000
    api = await _api(make_api)
    _dispatcher(api).max_attempts = 3
    job_id = await _submit(api, {"url": receiver.url})
    await _end(store, job_id, Status.CANCELLED)
    await _settled(api)
    assert len(receiver.posts) == 3
    (delivery,) = (await (await api.get(f"/jobs/{job_id}/deliveries")).json())["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["lastStatus"]) == ("failed", 3, 500)
    assert delivery["lastError"] == "answered 500"


@pytest.mark.parametrize(
    ("allow", "url", "says"),
    [
        (LOOPBACK, "http://example.com/hook", "not allowed for webhooks"),
        (("localhost",), "http://localhost:9/hook", "a loopback address"),
        (("*",), "http://127.0.0.1:9/hook", "a loopback address"),
        (("*",), "http://169.254.169.254/latest/meta-data", "a link-local address"),
        (("*",), "http://10.1.2.3/hook", "a private address"),
        (("*",), "http://[2002:7f00:1::]/hook", "a loopback address"),  # 6to4 of 127.0.0.1
        ((), "http://127.0.0.1:9/hook", "webhooks are off"),
    ],
)
async def test_a_url_the_server_may_not_call_is_refused_at_submission(
    make_api: MakeApi, store: Store, allow: tuple[str, ...], url: str, says: str
) -> None:
    api = await make_api(webhook_allow=allow)
    resp = await api.post("/jobs", json={**SEED_BODY, "notify": {"url": url}}, headers=JSON)
    error = await error_of(resp, 422, "webhook_refused")
    assert says in error["message"]
    assert [f["field"] for f in error["fields"]] == ["notify.url"]
    sweep = {"base": SEED_BODY, "grid": {"gates": [1000, 2000]}, "notify": {"url": url}}
    error = await error_of(await api.post("/sweeps", json=sweep, headers=JSON), 422)
    assert [f["field"] for f in error["fields"]] == ["notify.url"]
    assert await job_count(store) == 0


async def test_two_api_replicas_deliver_each_event_once(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    apis = [await _api(make_api), await _api(make_api)]
    assert _dispatcher(apis[0]).holder != _dispatcher(apis[1]).holder
    ids = [await _submit(apis[i % 2], {"url": receiver.url}) for i in range(6)]
    for job_id in ids:
        await _end(store, job_id, Status.SUCCEEDED)
    await receiver.delivered(len(ids))
    await _settled(*apis)
    await _settled(*apis)
    got = sorted(b["job"]["id"] for b in receiver.bodies())
    assert got == sorted(ids)  # each once: no job twice, none missing
    assert await store.deliveries.collection.count_documents({}) == len(ids)


async def test_an_event_that_happened_while_no_api_ran_is_delivered_at_start(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    job, _ = await insert_job(store, SEED_BODY, notify=Notify(url=receiver.url).model_dump())
    await _end(store, job.id, Status.SUCCEEDED)  # no API is running
    api = await _api(make_api)
    await receiver.delivered()
    await _settled(api)
    assert [b["job"]["id"] for b in receiver.bodies()] == [str(job.id)]


async def test_a_crashed_senders_delivery_is_resumed(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    """A replica recorded a delivery and died before sending it: its hold lapses and
    another replica sends it."""
    job, _ = await insert_job(store, SEED_BODY)
    await store.jobs.mark_notified([job.id])
    body = b'{"deliveryId":"d1","event":"succeeded"}'
    orphan = Delivery(key=f"job:{job.id}:succeeded:notify:x", deliveryId="d1", kind="job",
                      subjectId=job.id, event="succeeded", url=receiver.url, source="notify",
                      format="json", body=body)  # fmt: skip
    assert await store.deliveries.create(orphan, "a-replica-that-died", lease_s=0.001)
    api = await _api(make_api)
    await receiver.delivered()
    await _settled(api)
    assert [b for _, b in receiver.posts] == [body]
    (delivery,) = (await (await api.get(f"/jobs/{job.id}/deliveries")).json())["deliveries"]
    assert delivery["state"] == "delivered"


async def test_server_hooks_and_sweeps(make_api: MakeApi, store: Store, receiver: Receiver) -> None:
    """GATEQUEUE_WEBHOOKS' hooks hear of every job and sweep whose end they want; a sweep's
    own `notify` hears once, when its last run ends, with the runs' counts."""
    hook = Notify(url=receiver.url + "?server", events=["failed"])
    api = await _api(make_api, webhooks=(hook,))
    body = {"base": SEED_BODY, "grid": {"gates": [1000, 2000]}, "notify": {"url": receiver.url}}
    resp = await api.post("/sweeps", json=body, headers=JSON)
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    first, second = (j["id"] for j in sweep["jobs"])
    await _end(store, first, Status.SUCCEEDED)  # no hook wants a success; the sweep goes on
    # the failed run to the server hook; the sweep's end to its own hook and the server's
    await _end(store, second, Status.FAILED)
    await receiver.delivered(3)
    await _settled(api)
    assert len(receiver.posts) == 3
    jobs = [b for b in receiver.bodies() if "job" in b]
    assert [(b["job"]["id"], b["event"]) for b in jobs] == [(second, "failed")]
    sweeps = [b for b in receiver.bodies() if "sweep" in b]
    assert [(b["sweep"]["id"], b["event"]) for b in sweeps] == [(sweep["id"], "failed")] * 2
    assert sweeps[0]["sweep"]["counts"]["Succeeded"] == 1
    record = await (await api.get(f"/sweeps/{sweep['id']}/deliveries")).json()
    assert sorted((d["source"], d["state"]) for d in record["deliveries"]) == [
        ("notify", "delivered"),
        ("server", "delivered"),
    ]
    job_record = await (await api.get(f"/jobs/{second}/deliveries")).json()
    assert [d["source"] for d in job_record["deliveries"]] == ["server"]
    await error_of(await api.get(f"/sweeps/{'0' * 24}/deliveries"), 404)

    # deleting the sweep removes every record of its deliveries
    assert (await api.delete(f"/sweeps/{sweep['id']}")).status == 200
    assert await store.deliveries.collection.count_documents({}) == 0


def test_the_slack_format() -> None:
    url = "https://hooks.slack.com/services/T0/B0/secret"
    assert payload.format_of(url) == payload.SLACK_FORMAT
    assert payload.format_of("https://example.com/hook") == payload.JSON_FORMAT
    summary = {"id": "665f1c2e9b1e8a3d4c2b1a00", "name": "mnist <big> & wide",
               "status": "Failed", "submittedBy": "alice", "error": "exit 1"}  # fmt: skip
    body = json.loads(payload.body(payload.SLACK_FORMAT, event="failed", kind="job",
                                   summary=summary, url="https://q.example/#/jobs/665f",
                                   delivery_id="d"))  # fmt: skip
    assert body == {
        "text": "gatequeue: job <https://q.example/#/jobs/665f|mnist &lt;big&gt; &amp; wide> "
        "Failed (by alice): exit 1"
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(mongo_uri: str, db: str, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    """`gatequeue serve` in its own process, with webhooks to loopback allowed."""
    port = _free_port()
    env = {**os.environ, "MONGODB_URI": mongo_uri, "GATEQUEUE_DB": db,
           "GATEQUEUE_WEBHOOK_ALLOW": "127.0.0.1", "GATEQUEUE_WEBHOOK_SECRET": SECRET,
           "GATEQUEUE_LOG_FORMAT": "json"}  # fmt: skip
    env.pop("GATEQUEUE_API_TOKEN", None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "serve", "--port", str(port),
            stdout=fd, stderr=fd, env=env,
        )  # fmt: skip
    finally:
        os.close(fd)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        while True:  # until it answers (its start takes a second or two)
            assert proc.returncode is None, f"the API exited: see {log}"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return proc, url
            await asyncio.sleep(0.1)


async def test_two_api_processes_deliver_each_event_once(
    store: Store, mongo_uri: str, receiver: Receiver, tmp_path: Path
) -> None:
    """Two `gatequeue serve` processes on one database, both sending: each event reaches
    the receiver once, signed."""
    servers = [await _serve(mongo_uri, store.db.name, tmp_path / f"api{i}.log") for i in (0, 1)]
    recorded = await store.deliveries.collection.watch(full_document="updateLookup")
    try:
        ids = []
        async with aiohttp.ClientSession() as http:
            for i in range(6):
                _, url = servers[i % 2]
                body = {**SEED_BODY, "notify": {"url": receiver.url}}
                async with http.post(url + "/jobs", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    ids.append((await resp.json())["id"])
        for job_id in ids:
            await _end(store, job_id, Status.FAILED)
        await receiver.delivered(len(ids))
        delivered: set[str] = set()
        async for change in recorded:  # until each is recorded delivered, then stop them
            doc = change.get("fullDocument") or {}
            if doc.get("state") == "delivered":
                delivered.add(doc["_id"])
            if len(delivered) == len(ids):
                break
    finally:
        await recorded.close()
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            await proc.wait()
    assert sorted(b["job"]["id"] for b in receiver.bodies()) == sorted(ids)
    assert all(payload.verify(SECRET, b, h[payload.SIGNATURE_HEADER]) for h, b in receiver.posts)
    states = await store.deliveries.collection.distinct("state")
    assert states == ["delivered"]
    assert await store.deliveries.collection.count_documents({}) == len(ids)


async def test_a_notify_url_with_a_bad_port_is_refused_and_a_stored_one_still_lists(
    make_api: MakeApi, store: Store
) -> None:
    api = await _api(make_api)
    for url in ("http://127.0.0.1:99999/x", "http://127.0.0.1:80:80/secret", "http://h:abc/"):
        resp = await api.post("/jobs", json={**SEED_BODY, "notify": {"url": url}}, headers=JSON)
        error = await error_of(resp, 422)
        assert [f["field"] for f in error["fields"]] == ["notify.url"], url
    assert await job_count(store) == 0
    # A record stored before the port was checked never takes the listing down.
    job, _ = await insert_job(store, SEED_BODY)
    bad = {"url": "http://127.0.0.1:80:80/T000/B000/slack-secret", "events": ["finished"]}
    await store.jobs.collection.update_one({"_id": job.id}, {"$set": {"notify": bad}})
    resp = await api.get("/jobs")
    assert resp.status == 200, await resp.text()
    assert "slack-secret" not in await resp.text()


async def test_a_sender_that_lost_its_hold_does_not_send(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    """A delivery waiting for a free sending slot (or between tries) outlived its hold and
    another replica claimed it: only that one sends."""
    job, _ = await insert_job(store, SEED_BODY)
    await store.jobs.mark_notified([job.id])
    late = Delivery(key=f"job:{job.id}:succeeded:notify:y", deliveryId="d2", kind="job",
                    subjectId=job.id, event="succeeded", url=receiver.url, source="notify",
                    format="json", body=b'{"deliveryId":"d2"}')  # fmt: skip
    api = await _api(make_api)
    sender = _dispatcher(api)
    assert await store.deliveries.create(late, sender.holder, lease_s=60)
    # Its hold lapsed while it waited and another replica claimed it (claim_due's update).
    await store.deliveries.collection.update_one(
        {"_id": late.key}, {"$set": {"holder": "another-replica"}}
    )
    await sender._send(late)  # what the waiting task would do once a slot is free
    assert receiver.posts == []
    doc = await store.deliveries.collection.find_one({"_id": late.key})
    assert doc is not None and (doc["holder"], doc["state"]) == ("another-replica", "pending")


async def test_an_address_literal_is_checked_at_each_try_server_hooks_too(
    make_api: MakeApi, store: Store, receiver: Receiver
) -> None:
    """aiohttp never asks the resolver about an address literal: `*` never admits
    loopback, and a server hook (never submitted) is checked as it is sent."""
    api = await _api(make_api, webhook_allow=("*",), webhooks=(Notify(url=receiver.url),))
    _dispatcher(api).max_attempts = 2
    job_id = await _submit(api, None)
    await _end(store, job_id, Status.SUCCEEDED)
    ended = {"state": {"$in": ["failed", "delivered"]}}
    while not await store.deliveries.collection.count_documents(ended):
        await _settled(api)
    assert receiver.posts == []
    (delivery,) = (await (await api.get(f"/jobs/{job_id}/deliveries")).json())["deliveries"]
    assert delivery["state"] == "failed" and "loopback" in delivery["lastError"]
    assert "/hook" not in delivery["lastError"]
