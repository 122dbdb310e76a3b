"""What a page of another site could make a browser send is refused (service.api.origin);
the browser itself is driven in tests/live/test_live_cross_site.py."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, error_of, job_count

from service.api.app import OpenApiRefused, refuse_open
from service.config import Settings
from service.store import Store

EVIL = "http://evil.example"


async def test_writes_need_json_even_cancel(api: TestClient, store: Store) -> None:
    job = await (await api.post("/jobs", json=SEED_BODY)).json()
    for headers in ({}, {"Content-Type": "text/plain"},
                    {"Content-Type": "application/x-www-form-urlencoded"}):  # fmt: skip
        resp = await api.post(f"/jobs/{job['id']}/cancel", data=b"{}", headers=headers)
        await error_of(resp, 415, "unsupported_media_type")
    stored = await store.jobs.get(job["id"])
    assert stored is not None and stored.status == "Pending"


async def test_writes_from_another_origin_are_403(api: TestClient, store: Store) -> None:
    resp = await api.post("/jobs", json=SEED_BODY, headers={"Origin": EVIL})
    await error_of(resp, 403, "origin_refused")
    assert await job_count(store) == 0
    own = f"http://127.0.0.1:{api.server.port}"
    assert (await api.post("/jobs", json=SEED_BODY, headers={"Origin": own})).status == 201
    # A request without Origin is not a browser's: the token (here: none) decides.
    assert (await api.post("/jobs", json=SEED_BODY)).status == 201


async def test_websocket_handshakes_from_another_origin_are_403(api: TestClient) -> None:
    for path in ("/ws/jobs", "/jobs/665f1c2e9b1e8a3d4c2b1a00/logs/ws"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await api.ws_connect(path, headers={"Origin": EVIL})
        assert refused.value.status == 403
    own = f"http://127.0.0.1:{api.server.port}"
    async with api.ws_connect("/ws/jobs", headers={"Origin": own}) as ws:
        assert not ws.closed


async def test_allowed_origins_may(make_api: MakeApi, store: Store) -> None:
    api = await make_api(allowed_origins=("https://lab.example.org",))
    headers = {"Origin": "https://lab.example.org"}
    assert (await api.post("/jobs", json=SEED_BODY, headers=headers)).status == 201
    async with api.ws_connect("/ws/jobs", headers=headers) as ws:
        assert not ws.closed
    resp = await api.post("/jobs", json=SEED_BODY, headers={"Origin": "https://lab.example.net"})
    await error_of(resp, 403, "origin_refused")


async def test_an_open_api_answers_loopback_names_only(api: TestClient, store: Store) -> None:
    """DNS rebinding: evil.example resolved to 127.0.0.1 would be same-origin with the API."""
    for host in ("evil.example", "evil.example:8080", "192.168.1.5:8080"):
        resp = await api.get("/jobs", headers={"Host": host})
        await error_of(resp, 403, "host_refused")
        resp = await api.post("/jobs", json=SEED_BODY, headers={"Host": host, **JSON})
        await error_of(resp, 403, "host_refused")
    for host in ("localhost:8080", "127.0.0.1:9", "[::1]:8080", "localhost"):
        assert (await api.get("/jobs", headers={"Host": host})).status == 200, host
    assert await job_count(store) == 0


async def test_an_api_with_tokens_answers_any_host(make_api: MakeApi) -> None:
    api = await make_api(token="s3cret")
    resp = await api.get(
        "/jobs", headers={"Host": "queue.example.org", "Authorization": "Bearer s3cret"}
    )
    assert resp.status == 200


def test_serving_beyond_loopback_without_a_token_is_refused() -> None:
    settings = Settings(mongodb_uri="mongodb://x")
    for host in ("0.0.0.0", "192.168.1.5", "queue.example.org", "::"):
        with pytest.raises(OpenApiRefused, match="--insecure-open"):
            refuse_open(settings, host, insecure_open=False)
        refuse_open(settings, host, insecure_open=True)
    for host in ("127.0.0.1", "localhost", "::1"):
        refuse_open(settings, host, insecure_open=False)
    refuse_open(Settings(mongodb_uri="mongodb://x", api_token="t"), "0.0.0.0", insecure_open=False)
