"""`GateQueueClient` against the real API on the test MongoDB."""

from __future__ import annotations

import asyncio
import socket

import pytest
from live_helpers import LiveApi, MakeLiveApi, finish, running_job, write_lines

from service.client import GateQueueClient, GateQueueConnectionError, GateQueueError
from service.jobs.record import WorkerRef
from service.jobs.request import SEED_BODY as SEED
from service.jobs.status import Status


async def test_submit_get_list_cancel(client: GateQueueClient) -> None:
    job = await client.submit(**SEED, name="seed")
    assert job["status"] == "Pending"
    assert job["hyperparameters"]["gateOptimizer"] == "sparsemax_noise"
    assert (await client.get(job["id"]))["name"] == "seed"
    other = await client.submit(**SEED)
    page = await client.list(limit=1)
    assert [j["id"] for j in page] == [other["id"]]
    assert page.next == other["id"]
    rest = await client.list(limit=10, after=page.next)
    assert [j["id"] for j in rest] == [job["id"]]
    assert rest.next is None
    cancelled = await client.cancel(job["id"])
    assert cancelled["status"] == "Cancelled"
    assert [j["id"] for j in await client.list(status="Cancelled")] == [job["id"]]


async def test_idempotent_submit_returns_the_same_job(client: GateQueueClient) -> None:
    first = await client.submit(idempotency_key="k-1", **SEED)
    again = await client.submit(idempotency_key="k-1", **SEED)
    assert again["id"] == first["id"]


async def test_errors_carry_the_api_body(client: GateQueueClient) -> None:
    with pytest.raises(GateQueueError) as bad:
        await client.submit(**{**SEED, "gates": 0, "bogus": 1})
    err = bad.value
    assert err.status == 422
    assert err.code == "validation_error"
    assert {f["field"] for f in err.fields or []} == {"gates", "bogus"}
    assert err.body["error"]["code"] == "validation_error"
    assert "gates" in str(err)

    with pytest.raises(GateQueueError) as missing:
        await client.get("0" * 24)
    assert missing.value.status == 404
    assert missing.value.code == "job_not_found"

    job = await client.submit(**SEED)
    await client.cancel(job["id"])
    with pytest.raises(GateQueueError) as finished:
        await client.cancel(job["id"])
    assert finished.value.status == 409

    # A refused WebSocket has no body; the client asks over HTTP to explain it.
    with pytest.raises(GateQueueError) as no_logs:
        async for _ in client.logs("f" * 24):
            pass
    assert no_logs.value.status == 404
    assert no_logs.value.code == "job_not_found"
    with pytest.raises(GateQueueError) as no_wait:
        await client.wait("f" * 24)
    assert no_wait.value.code == "job_not_found"


async def test_metrics_and_wait_follow_a_worker(live_api: LiveApi, client: GateQueueClient) -> None:
    store = live_api.store
    job = await running_job(store)
    job_id = str(job.id)
    waiter = asyncio.create_task(client.wait(job_id))
    watch = client.watch(job_id)
    assert (await anext(watch))["status"] == "Running"
    await watch.aclose()
    for epoch in (1, 2):
        values = {"train_loss": 1.0 / epoch, "test_acc": 0.5 + epoch / 10}
        await store.metrics.write(job.id, epoch, 2, values)
        await store.jobs.set_latest_metrics(job, {"epoch": epoch, "epochs": 2, **values})
    await finish(store, job)
    final = await waiter
    assert final["status"] == "Succeeded"
    assert final["latestMetrics"] == {"epoch": 2, "epochs": 2, "train_loss": 0.5, "test_acc": 0.7}
    rows = await client.metrics(job_id)
    assert [(r["epoch"], r["test_acc"]) for r in rows] == [(1, 0.6), (2, 0.7)]


async def test_logs_without_follow_read_what_is_stored(
    live_api: LiveApi, client: GateQueueClient
) -> None:
    job = await running_job(live_api.store)
    await write_lines(live_api.store, job, [f"s{i}" for i in range(25_000)], batch=1000)
    lines = [line async for line in client.logs(str(job.id), follow=False, from_seq=3)]
    assert [line.seq for line in lines] == list(range(3, 25_000))
    assert lines[0].line == "s3"
    assert lines[-1].stream == "stdout"


async def test_follow_stops_with_the_end_message(
    live_api: LiveApi, client: GateQueueClient
) -> None:
    store = live_api.store
    job = await running_job(store)
    await write_lines(store, job, ["only line"], batch=1)
    await finish(store, job, Status.FAILED)
    stream = client.logs(str(job.id))
    assert [line.line async for line in stream] == ["only line"]
    assert stream.end is not None
    assert (stream.end.status, stream.end.exit_code) == ("Failed", 1)


async def test_token(make_live_api: MakeLiveApi) -> None:
    api = await make_live_api(token="t0ken")
    async with GateQueueClient(api.url, token="") as anonymous:
        with pytest.raises(GateQueueError) as refused:
            await anonymous.list()
        assert refused.value.status == 401
        assert refused.value.code == "unauthorized"
    async with GateQueueClient(api.url, token="t0ken") as client:
        job = await client.submit(**SEED)
        claimed = await api.store.jobs.claim(
            await api.store.jobs.get(job["id"]),  # type: ignore[arg-type]
            WorkerRef(id="w", host="h", gpu="cpu"),
            lease_s=60,
        )
        assert claimed is not None
        await write_lines(api.store, claimed, ["a", "b"], batch=2)
        await finish(api.store, claimed)
        assert [line.line async for line in client.logs(job["id"])] == ["a", "b"]
        assert (await client.wait(job["id"]))["status"] == "Succeeded"


async def test_unreachable_api_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with GateQueueClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(GateQueueConnectionError, match="cannot reach"):
                await client.list()


@pytest.mark.parametrize("follow", ["watch", "watch_sweep", "logs"])
async def test_following_gives_up_after_max_reconnect_attempts_in_a_row(follow: str) -> None:
    """Each following stream (job, sweep, log) reconnects on the one schedule
    (service.retry.Failures) and gives up after `max_reconnect_attempts` failures in a row."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with GateQueueClient(
            f"http://127.0.0.1:{port}",
            reconnect_delay_s=0.0,
            max_reconnect_delay_s=0.0,
            max_reconnect_attempts=3,
        ) as client:
            stream = {
                "watch": lambda: client.watch("665f1c2e9b1e8a3d4c2b1a00"),
                "watch_sweep": lambda: client.watch_sweep("665f1c2e9b1e8a3d4c2b1a00"),
                "logs": lambda: client.logs("665f1c2e9b1e8a3d4c2b1a00"),
            }[follow]()
            with pytest.raises(GateQueueConnectionError, match="after 3 attempts"):
                async for _ in stream:
                    pass


async def test_usage_and_a_refused_webhook(client: GateQueueClient) -> None:
    """`usage()` is GET /usage; a webhook on an API whose webhooks are off is a 422."""
    await client.submit(**SEED)
    report = await client.usage(since="2020-01-01T00:00:00Z")
    assert report["since"] == "2020-01-01T00:00:00.000Z"
    (row,) = report["users"]
    assert row["jobs"]["Pending"] == 1
    with pytest.raises(GateQueueError) as refused:
        await client.usage(since="soon")
    assert refused.value.status == 422
    with pytest.raises(GateQueueError) as refused:
        await client.submit(**SEED, notify={"url": "https://hooks.example.com/x"})
    assert refused.value.status == 422 and "webhooks are off" in str(refused.value)
