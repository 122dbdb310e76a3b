"""The WebSocket log tail and job feed against the real API on the test MongoDB."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from job_helpers import insert_job
from live_helpers import TINY_JOB, LiveApi, MakeLiveApi, finish, running_job, write_lines

from service import tokens
from service.api.auth import AUTH
from service.api.ws import CLOSE_REVOKED, CLOSE_TOO_SLOW, LiveSettings
from service.client import GateQueueClient, LogLine
from service.jobs.status import Status
from service.tokens import Role


async def read_tail(url: str, job_id: Any, from_seq: int = 0) -> tuple[list[dict], dict | None]:
    """Every message of one log WebSocket until it closes: (line messages, end message)."""
    batches: list[dict] = []
    end = None
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/jobs/{job_id}/logs/ws?from={from_seq}") as ws,
    ):
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] == "lines":
                batches.append(data)
            elif data["type"] == "end":
                end = data
    return batches, end


def flatten(batches: list[dict]) -> list[tuple[int, str]]:
    return [(b["seq"] + i, line) for b in batches for i, line in enumerate(b["lines"])]


async def test_ten_thousand_lines_in_order_across_a_forced_reconnect(
    live_api: LiveApi, client: GateQueueClient
) -> None:
    """A worker-like writer appends 10,000 lines while the client reads; half-way the
    server closes the connection; the iterator still yields each line once, in order."""
    store = live_api.store
    job = await running_job(store)
    total = 10_000
    lines = [f"line {i:05d} " + "x" * (i % 50) for i in range(total)]
    half_way = asyncio.Event()
    reconnected_from: list[int] = []

    async def writer() -> None:
        await write_lines(store, job, lines[: total // 2], batch=37)
        await half_way.wait()  # the rest is written around the forced reconnect
        await write_lines(store, job, lines[total // 2 :], batch=53, seq=total // 2)
        await finish(store, job)

    got: list[LogLine] = []
    writing = asyncio.create_task(writer())
    stream = client.logs(str(job.id))
    async with stream:
        async for line in stream:
            got.append(line)
            if len(got) == total // 2 - 1000:
                tails = live_api.live.log_tails(job.id)
                assert len(tails) == 1
                reconnected_from.append(len(got))
                await tails[0].close(1012, "test: forced close")
                half_way.set()
    await writing
    assert stream.reconnects >= 1
    assert reconnected_from == [total // 2 - 1000]
    assert [line.seq for line in got] == list(range(total))
    assert [line.line for line in got] == lines
    assert stream.end is not None
    assert stream.end.status == "Succeeded"
    assert stream.end.seq == total


async def test_tail_starts_mid_batch_and_ends_for_a_finished_job(live_api: LiveApi) -> None:
    store = live_api.store
    job = await running_job(store)
    await write_lines(store, job, [f"l{i}" for i in range(20)], batch=5)
    await finish(store, job, Status.FAILED)
    batches, end = await read_tail(live_api.url, job.id, from_seq=7)
    assert batches[0]["seq"] == 7
    assert flatten(batches) == [(i, f"l{i}") for i in range(7, 20)]
    assert end == {"type": "end", "status": "Failed", "exitCode": 1, "error": None, "seq": 20}


async def test_end_waits_for_lines_committed_before_the_final_status(
    live_api: LiveApi,
) -> None:
    """The jobs and job_logs streams are not ordered with each other: the final status
    may be seen before the last batch. Every line must still come before `end`."""
    store = live_api.store
    for _ in range(5):
        job = await running_job(store)
        reader = asyncio.create_task(read_tail(live_api.url, job.id))
        await live_api.live.wait_for_tails(job.id, 1)  # connected before any write
        await write_lines(store, job, [f"a{i}" for i in range(30)], batch=10)
        await finish(store, job)
        batches, end = await reader
        assert flatten(batches) == [(i, f"a{i}") for i in range(30)]
        assert end is not None
        assert end["status"] == "Succeeded"


async def test_one_change_stream_per_collection_for_many_clients(live_api: LiveApi) -> None:
    store = live_api.store
    jobs = [await running_job(store) for _ in range(3)]
    readers = [
        asyncio.create_task(read_tail(live_api.url, job.id)) for job in jobs for _ in range(3)
    ]
    async with aiohttp.ClientSession() as http:
        feeds = [await http.ws_connect(f"{live_api.url}/ws/jobs") for _ in range(3)]
        for job in jobs:
            await live_api.live.wait_for_tails(job.id, 3)
        for job in jobs:
            await write_lines(store, job, ["hello", "world"], batch=1)
            await finish(store, job)
        for reader in readers:
            batches, end = await reader
            assert flatten(batches) == [(0, "hello"), (1, "world")]
            assert end is not None
        for ws in feeds:
            await ws.close()
    streams = live_api.live.fanout.streams
    assert {n: s.opens for n, s in streams.items()} == {"job_logs": 1, "jobs": 1}
    await live_api.live.wait_idle()
    assert live_api.live.subscriber_count() == 0  # nobody left behind


async def test_stream_resumes_from_its_token_without_loss(
    live_api: LiveApi, client: GateQueueClient
) -> None:
    """Close the process's log change stream under it while lines keep coming: the fanout
    reopens it from the last resume token, so live readers miss nothing."""
    store = live_api.store
    fanout = live_api.live.fanout
    job = await running_job(store)
    resyncs = fanout.resyncs
    got: list[int] = []
    stream = client.logs(str(job.id))
    await stream.connect()
    await live_api.live.wait_for_tails(job.id, 1)

    async def writer() -> None:
        seq = await write_lines(store, job, [f"b{i}" for i in range(100)], batch=10)
        await fanout.streams["job_logs"].stream.close()  # interrupts an awaiting getMore
        await fanout.streams["job_logs"].wait_opened(2)
        await write_lines(store, job, [f"b{i}" for i in range(100, 200)], batch=10, seq=seq)

    writing = asyncio.create_task(writer())
    async with stream:
        async for line in stream:
            got.append(line.seq)
            if line.seq == 199:  # all of it came live; only now may the job end
                await finish(store, job)
    await writing
    assert got == list(range(200))
    assert fanout.streams["job_logs"].opens == 2
    # Every insert was seen exactly once by the process: the reopened stream resumed from
    # its token, neither skipping nor repeating (a restart would have sent a Resync).
    assert fanout.streams["job_logs"].events == 20
    assert fanout.resyncs == resyncs
    assert stream.reconnects == 0


def _tiny_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def test_slow_client_is_closed_with_a_reason_and_others_are_not_slowed(
    make_live_api: MakeLiveApi,
) -> None:
    """A client that stops reading overflows its own bounded queue and is closed with
    4001 and a resume hint; a reader of the same job gets every line regardless."""
    api = await make_live_api(
        live=LiveSettings(max_queue_items=1_000, max_queue_lines=2_000, close_timeout_s=30)
    )
    store = api.store
    job = await running_job(store)
    lines = [f"{i:06d} " + "y" * 200 for i in range(20_000)]  # ~4 MB: far past TCP buffers
    connector = aiohttp.TCPConnector(socket_factory=_tiny_receive_buffer)
    fast_seen = 0
    fast_progress = asyncio.Condition()

    async def fast_reader(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[int], dict]:
        nonlocal fast_seen
        seqs: list[int] = []
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] == "end":
                return seqs, data
            seqs += range(data["seq"], data["seq"] + len(data["lines"]))
            async with fast_progress:
                fast_seen = seqs[-1] + 1
                fast_progress.notify_all()
        raise AssertionError(f"fast reader closed early: {ws.close_code}")

    async with (
        aiohttp.ClientSession(connector=connector) as slow_http,
        slow_http.ws_connect(f"{api.url}/jobs/{job.id}/logs/ws") as slow,
        aiohttp.ClientSession() as fast_http,
    ):
        (slow_conn,) = await api.live.wait_for_tails(job.id, 1)
        fast_ws = await fast_http.ws_connect(f"{api.url}/jobs/{job.id}/logs/ws")
        await api.live.wait_for_tails(job.id, 2)
        fast = asyncio.create_task(fast_reader(fast_ws))
        seq = 0
        for start in range(0, len(lines), 1_000):
            # Paced by the fast reader, so only the slow one can fall behind.
            seq = await write_lines(store, job, lines[start : start + 1_000], batch=50, seq=seq)
            async with fast_progress:
                await fast_progress.wait_for(lambda seq=seq: fast_seen >= seq)
        await slow_conn.sub.dropped.wait()
        await finish(store, job)
        seqs, end = await fast
        assert seqs == list(range(len(lines)))
        assert end["status"] == "Succeeded"
        await fast_ws.close()

        received = 0
        while True:  # the slow one gets what was in flight, then the reason
            msg = await slow.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            received += len(json.loads(msg.data)["lines"])
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == CLOSE_TOO_SLOW
        assert "too slow" in msg.extra
        assert f"resume from={received}" in msg.extra
        assert received < len(lines)
    assert api.live.fanout.dropped_subscribers == 1


async def test_job_feed_sends_changes_and_a_snapshot_for_watched_ids(live_api: LiveApi) -> None:
    store = live_api.store
    job, _ = await insert_job(store, {"gateOptimizer": "entmax", "gates": 40, "epochs": 1})
    async with aiohttp.ClientSession() as http:
        everything = await http.ws_connect(f"{live_api.url}/ws/jobs")
        watched = await http.ws_connect(f"{live_api.url}/ws/jobs?id={job.id}")
        first = await watched.receive_json()
        assert first["type"] == "job"
        assert first["job"]["id"] == str(job.id)
        assert first["job"]["status"] == "Pending"
        await store.jobs.request_cancel(job.id)
        for ws in (everything, watched):
            while True:
                msg = await ws.receive_json()
                if msg["job"]["status"] == "Cancelled":
                    break
            await ws.close()
        async with http.get(f"{live_api.url}/ws/jobs?id={'0' * 24}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "job_not_found"


async def test_log_tail_refuses_unknown_jobs_bad_from_and_plain_http(live_api: LiveApi) -> None:
    job = await running_job(live_api.store)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live_api.url}/jobs/{'f' * 24}/logs/ws") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "job_not_found"
        async with http.get(f"{live_api.url}/jobs/{job.id}/logs/ws?from=-3") as resp:
            assert resp.status == 422
            assert (await resp.json())["error"]["fields"][0]["field"] == "from"
        async with http.get(f"{live_api.url}/jobs/{job.id}/logs/ws") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "websocket_required"


async def test_websockets_need_the_token_when_one_is_set(make_live_api: MakeLiveApi) -> None:
    api = await make_live_api(token="s3cret")
    job = await running_job(api.store)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}/ws/jobs")
        assert refused.value.status == 401
        # Not in the URL (docs/security.md): the header of the handshake, or a session.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{api.url}/ws/jobs?token=s3cret")
        assert refused.value.status == 401
        ws = await http.ws_connect(f"{api.url}/ws/jobs", headers={"Authorization": "Bearer s3cret"})
        await ws.close()
        ws = await http.ws_connect(
            f"{api.url}/jobs/{job.id}/logs/ws",
            headers={"Authorization": "Bearer s3cret"},
        )
        await ws.close()


async def test_handshake_carries_the_request_id(live_api: LiveApi) -> None:
    job = await running_job(live_api.store)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{live_api.url}/jobs/{job.id}/logs/ws", headers={"X-Request-ID": "ws-trace-1"}
        ) as ws,
    ):
        assert ws._response.headers["X-Request-ID"] == "ws-trace-1"
        made = await http.ws_connect(f"{live_api.url}/ws/jobs")
        assert len(made._response.headers["X-Request-ID"]) == 32
        await made.close()


async def _signed_in(
    http: aiohttp.ClientSession, api: LiveApi, secret: str, how: str
) -> dict[str, str]:
    """The handshake headers of a client signed in with `secret`: the token itself, or the
    session cookie it was traded for (as the web page is)."""
    bearer = {"Authorization": f"Bearer {secret}"}
    if how == "token":
        return bearer
    async with http.post(f"{api.url}/session", json={}, headers=bearer) as resp:
        assert resp.status == 201
        cookie = resp.cookies["gq_session"].value
    http.cookie_jar.clear()
    return {"Cookie": f"gq_session={cookie}"}


@pytest.mark.parametrize("how", ["token", "session"])
@pytest.mark.parametrize("route", ["feed", "tail"])
async def test_an_open_socket_closes_when_its_token_goes(
    make_live_api: MakeLiveApi, tmp_path: Path, how: str, route: str
) -> None:
    """bob's socket delivered other users' jobs (or a log) after `token rm bob` (issue 26,
    defect 2): once the API has re-read the file, nothing more is sent and the socket is
    closed with 1008."""
    path = tmp_path / "tokens.json"
    bob = tokens.add(path, "bob", Role.READ)
    carol = tokens.add(path, "carol", Role.SUBMIT)
    api = await make_live_api(tokens_file=path)
    job = await running_job(api.store)
    async with aiohttp.ClientSession() as http:
        headers = await _signed_in(http, api, bob, how)

        async def something_happens() -> str | None:
            if route == "tail":
                await write_lines(api.store, job, ["a line"], batch=1, seq=seq[0])
                seq[0] += 1
                return None
            carols = {"Authorization": f"Bearer {carol}"}
            async with http.post(f"{api.url}/jobs", json=TINY_JOB, headers=carols) as resp:
                assert resp.status == 201
                return str((await resp.json())["id"])

        seq = [0]
        url = f"{api.url}/jobs/{job.id}/logs/ws" if route == "tail" else f"{api.url}/ws/jobs"
        async with http.ws_connect(url, headers=headers) as ws:
            carols_job = await something_happens()
            # The feed may still deliver the changes of the fixture's own job (made before the
            # socket opened, seen by the change stream after): read up to carol's, so that
            # everything sent before the token goes is out of the way.
            while True:
                seen = await ws.receive_json()
                assert seen["type"] == ("lines" if route == "tail" else "job")
                if route == "tail" or seen["job"]["id"] == carols_job:
                    break
            tokens.remove(path, "bob")
            await api.app[AUTH].reload()  # what the watcher does within 2 s of the change
            await something_happens()
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert ws.close_code == CLOSE_REVOKED == 1008
            assert "sign in again" in msg.extra


@pytest.mark.timeout(60)
async def test_a_socket_closes_when_its_session_ends_elsewhere(
    make_live_api: MakeLiveApi, tmp_path: Path
) -> None:
    """Without a change of the tokens file (the session was ended through another replica,
    or expired), the periodic re-check closes the socket."""
    path = tmp_path / "tokens.json"
    alice = tokens.add(path, "alice", Role.SUBMIT)
    api = await make_live_api(tokens_file=path, live=LiveSettings(recheck_s=0.05))
    async with aiohttp.ClientSession() as http:
        cookie = await _signed_in(http, api, alice, "session")
        async with http.ws_connect(f"{api.url}/ws/jobs", headers=cookie) as ws:
            async with http.post(f"{api.url}/session/end", json={}, headers=cookie) as resp:
                assert resp.status == 200
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert ws.close_code == CLOSE_REVOKED


@pytest.mark.timeout(60)
async def test_the_tokens_watcher_closes_a_socket_of_a_removed_token(
    make_live_api: MakeLiveApi, tmp_path: Path
) -> None:
    """Nobody calls reload here: the API's own watcher sees `gatequeue token rm` (it re-reads
    the file every 2 s) and the socket is closed with 1008."""
    path = tmp_path / "tokens.json"
    bob = tokens.add(path, "bob", Role.READ)
    api = await make_live_api(tokens_file=path)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{api.url}/ws/jobs", headers={"Authorization": f"Bearer {bob}"}) as ws,
    ):
        tokens.remove(path, "bob")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert ws.close_code == CLOSE_REVOKED
