"""Token on and off: every /jobs route needs it when set; health routes never do."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, error_of, job_count
from bson import ObjectId

from service.store import Store

TOKEN = "s3cret-token"
JOB_ROUTES = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", f"/jobs/{ObjectId()}"),
    ("POST", f"/jobs/{ObjectId()}/cancel"),
    ("GET", f"/jobs/{ObjectId()}/logs"),
    ("GET", f"/jobs/{ObjectId()}/metrics"),
]
OPEN_ROUTES = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", f"{TOKEN}"],
    ids=["missing", "wrong", "basic", "longer", "empty", "no scheme"],
)
async def test_job_routes_refuse_without_the_token(
    make_api: MakeApi, store: Store, authorization: str | None
) -> None:
    api = await make_api(token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in JOB_ROUTES:
        resp = await api.request(method, path, json=SEED_BODY, headers=headers)
        error = await error_of(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in error["message"]
    # A token in the query string is for WebSockets only.
    resp = await api.post(f"/jobs?token={TOKEN}", json=SEED_BODY)
    await error_of(resp, 401, "unauthorized")
    assert await job_count(store) == 0


async def test_job_routes_accept_the_token(make_api: MakeApi, store: Store) -> None:
    api = await make_api(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await api.post("/jobs", json=SEED_BODY, headers=auth)
    assert resp.status == 201
    job = await resp.json()
    lower = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert (await api.get(f"/jobs/{job['id']}", headers=lower)).status == 200
    assert (await api.get("/jobs", headers=auth)).status == 200
    assert (await api.get(f"/jobs/{job['id']}/logs", headers=auth)).status == 200
    assert (await api.get(f"/jobs/{job['id']}/metrics", headers=auth)).status == 200
    assert (await api.post(f"/jobs/{job['id']}/cancel", json={}, headers=auth)).status == 200


async def test_health_routes_stay_open_with_a_token(make_api: MakeApi) -> None:
    api = await make_api(token=TOKEN)
    for path in OPEN_ROUTES:
        resp = await api.get(path)
        assert resp.status == 200, (path, await resp.text())


async def test_no_token_configured_means_open(api: TestClient) -> None:
    assert (await api.post("/jobs", json=SEED_BODY)).status == 201
    # A stray Authorization header is ignored when no token is configured.
    resp = await api.get("/jobs", headers={"Authorization": "Bearer anything"})
    assert resp.status == 200


async def test_a_token_in_a_websocket_url_is_not_accepted(make_api: MakeApi) -> None:
    """Tokens stay out of URLs (logs, histories): a WebSocket is signed in by the session
    cookie or the Authorization header of its handshake, never by `?token=`."""
    api = await make_api(token=TOKEN)
    resp = await api.get(f"/ws/jobs?token={TOKEN}", headers={"Upgrade": "websocket"})
    await error_of(resp, 401, "unauthorized")
    async with api.ws_connect("/ws/jobs", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert not ws.closed
