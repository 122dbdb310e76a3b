"""Named tokens with roles, on every route of the route table: each role allowed and refused
where it should be; jobs record who submitted them; cancelling another's job needs admin."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, error_of, job_count, sign_in

from service import tokens
from service.api.auth import AUTH
from service.api.routes import ROUTE_MODULES
from service.api.routing import Route, all_routes
from service.store import Store
from service.tokens import Role

ROLES = (Role.READ, Role.SUBMIT, Role.ADMIN)


@pytest.fixture
async def team(make_api: MakeApi, tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    """An API with a tokens file: one token per role, and a second submitter."""
    path = tmp_path / "tokens.json"
    names = {"reader": Role.READ, "alice": Role.SUBMIT, "bob": Role.SUBMIT, "boss": Role.ADMIN}
    secrets = {name: tokens.add(path, name, role) for name, role in names.items()}
    api = await make_api(tokens_file=path)
    return api, secrets


def _auth(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


def _path(route: Route, job_id: str) -> str:
    path = route.path.replace("{id}", job_id)
    return re.sub(r"\{(\w+)(:[^}]+)?\}", lambda m: "network.json" if m[1] == "name" else "app.js",
                  path)  # fmt: skip


async def _call(
    api: TestClient, route: Route, path: str, secret: str | None,
    headers: dict[str, str] | None = None,
) -> int:
    headers = _auth(secret) if headers is None else headers
    if route.websocket:
        try:
            async with api.ws_connect(path, headers=headers):
                return 101
        except WSServerHandshakeError as exc:
            return exc.status
    body: Any = SEED_BODY if route.path == "/jobs" else {}
    kwargs = {"json": body} if route.method == "POST" else {}
    async with api.request(route.method, path, headers=headers, **kwargs) as resp:
        return resp.status


@pytest.mark.parametrize("route", all_routes(ROUTE_MODULES), ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_allows_and_refuses_each_role(
    team: tuple[TestClient, dict[str, str]], route: Route
) -> None:
    api, secrets = team
    created = await api.post("/jobs", json=SEED_BODY, headers=_auth(secrets["alice"]))
    job_id = (await created.json())["id"]
    path = _path(route, job_id)
    callers: dict[str | None, Role | None] = {
        None: None, "reader": Role.READ, "alice": Role.SUBMIT, "boss": Role.ADMIN
    }  # fmt: skip
    for name, role in callers.items():
        status = await _call(api, route, path, secrets.get(name or ""))
        if route.role is None or (role is not None and role >= route.role):
            assert status not in (401, 403), (name, route.method, route.path, status)
        else:
            assert status == (401 if role is None else 403), (name, route.method, route.path)


# How a token changes under a signed-in browser: `gatequeue token add` (a new token, with the
# same or a lower role) or `token rm`.
TOKEN_CHANGES = {
    "rotated": lambda path: tokens.add(path, "boss", Role.ADMIN),
    "demoted": lambda path: tokens.add(path, "boss", Role.READ),
    "removed": lambda path: tokens.remove(path, "boss"),
}


@pytest.mark.parametrize("change", TOKEN_CHANGES)
@pytest.mark.parametrize("route", all_routes(ROUTE_MODULES), ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_refuses_a_session_whose_token_changed(
    make_api: MakeApi, tmp_path: Path, route: Route, change: str
) -> None:
    """An admin signs in, then their token is rotated, demoted or removed: the cookie is
    nobody's any more on every route (401 where a role is needed, 200 where none is)."""
    path = tmp_path / "tokens.json"
    boss = tokens.add(path, "boss", Role.ADMIN)
    alice = tokens.add(path, "alice", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    created = await api.post("/jobs", json=SEED_BODY, headers=_auth(alice))
    url = _path(route, (await created.json())["id"])
    cookie = await sign_in(api, boss)
    TOKEN_CHANGES[change](path)
    await api.app[AUTH].reload()  # what the watcher does within 2 s of the change
    status = await _call(api, route, url, None, headers=cookie)
    if route.role is None:
        assert status not in (401, 403), (change, route.method, route.path, status)
    else:
        assert status == 401, (change, route.method, route.path, status)
    me = await (await api.get("/whoami", headers=cookie)).json()
    assert me["authenticated"] is False, (change, me)


async def test_jobs_record_who_submitted_them_and_cancel_needs_the_owner_or_admin(
    team: tuple[TestClient, dict[str, str]], store: Store
) -> None:
    api, secrets = team
    resp = await api.post("/jobs", json=SEED_BODY, headers=_auth(secrets["alice"]))
    job = await resp.json()
    assert job["submittedBy"] == "alice"
    stored = await store.jobs.get(job["id"])
    assert stored is not None and stored.submittedBy == "alice"
    mine = await api.get("/jobs?submittedBy=alice", headers=_auth(secrets["reader"]))
    assert [j["id"] for j in (await mine.json())["jobs"]] == [job["id"]]

    path = f"/jobs/{job['id']}/cancel"
    error = await error_of(
        await api.post(path, json={}, headers=_auth(secrets["bob"])), 403, "forbidden"
    )
    assert "alice" in error["message"]
    await error_of(await api.post(path, json={}, headers=_auth(secrets["reader"])), 403)
    still = await store.jobs.get(job["id"])
    assert still is not None and still.status == "Pending"
    assert (await api.post(path, json={}, headers=_auth(secrets["alice"]))).status == 200

    other = await (await api.post("/jobs", json=SEED_BODY, headers=_auth(secrets["bob"]))).json()
    resp = await api.post(f"/jobs/{other['id']}/cancel", json={}, headers=_auth(secrets["boss"]))
    assert resp.status == 200


async def test_a_reader_cannot_submit_and_nothing_is_stored(
    team: tuple[TestClient, dict[str, str]], store: Store
) -> None:
    api, secrets = team
    resp = await api.post("/jobs", json=SEED_BODY, headers=_auth(secrets["reader"]))
    error = await error_of(resp, 403, "forbidden")
    assert "read" in error["message"] and secrets["reader"] not in error["message"]
    assert await job_count(store) == 0


async def test_a_removed_token_stops_working(
    make_api: MakeApi, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "tokens.json"
    secret = tokens.add(path, "carol", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    assert (await api.get("/jobs", headers=_auth(secret))).status == 200
    tokens.remove(path, "carol")
    await api.app[AUTH].reload()  # what the watcher does every 2 s when the file changed
    await error_of(await api.get("/jobs", headers=_auth(secret)), 401)


async def test_the_api_token_is_an_admin_named_admin(make_api: MakeApi, store: Store) -> None:
    api = await make_api(token="s3cret")
    job = await (await api.post("/jobs", json=SEED_BODY, headers=_auth("s3cret"))).json()
    assert job["submittedBy"] == "admin"
    me = await (await api.get("/whoami", headers=_auth("s3cret"))).json()
    assert me == {"name": "admin", "role": "admin", "authenticated": True, "open": False}
