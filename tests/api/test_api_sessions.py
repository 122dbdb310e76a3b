"""A session follows the token it was made from (issue 26, defect 1): rotating, demoting or
removing the token ends its sessions at once, the role is always the token's current one,
a session cannot make another, and the sessions of a removed token are deleted."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, bearer, error_of, job_count, sign_in

from service import tokens
from service.api.auth import AUTH
from service.store import Store
from service.tokens import Role


async def _reload(api: TestClient) -> None:
    await api.app[AUTH].reload()  # what the watcher does within 2 s of a change of the file


async def _whoami(api: TestClient, headers: dict[str, str]) -> dict[str, object]:
    resp = await api.get("/whoami", headers=headers)
    assert resp.status == 200
    body: dict[str, object] = await resp.json()
    return body


async def test_a_rotated_and_demoted_admin_token_ends_its_session(
    make_api: MakeApi, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "tokens.json"
    root = tokens.add(path, "root", Role.ADMIN)
    bob = tokens.add(path, "bob", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    cookie = await sign_in(api, root)
    assert (await _whoami(api, cookie))["role"] == "admin"
    job = await (await api.post("/jobs", json=SEED_BODY, headers=bearer(bob))).json()

    tokens.add(path, "root", Role.READ)  # `gatequeue token add root --role read`
    await _reload(api)
    assert await store.sessions.collection.count_documents({"name": "root"}) == 0
    await error_of(await api.get("/jobs", headers=bearer(root)), 401)
    me = await _whoami(api, cookie)
    assert me == {"name": None, "role": None, "authenticated": False, "open": False}
    resp = await api.post(f"/jobs/{job['id']}/cancel", json={}, headers=cookie)
    await error_of(resp, 401, "unauthorized")
    still = await store.jobs.get(job["id"])
    assert still is not None and still.status == "Pending"


async def test_a_removed_then_re_added_token_does_not_revive_its_session(
    make_api: MakeApi, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "tokens.json"
    alice = tokens.add(path, "alice", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    cookie = await sign_in(api, alice)
    assert (await api.post("/jobs", json=SEED_BODY, headers=cookie)).status == 201
    assert await store.sessions.collection.count_documents({"name": "alice"}) == 1

    tokens.remove(path, "alice")
    await _reload(api)
    # The removed token's sessions are deleted, not only refused.
    assert await store.sessions.collection.count_documents({"name": "alice"}) == 0
    new = tokens.add(path, "alice", Role.READ)
    await _reload(api)
    await error_of(await api.post("/jobs", json=SEED_BODY, headers=cookie), 401)
    await error_of(await api.post("/jobs", json=SEED_BODY, headers=bearer(new)), 403)
    assert await job_count(store) == 1


async def test_a_session_cannot_start_another(
    make_api: MakeApi, tmp_path: Path, store: Store
) -> None:
    path = tmp_path / "tokens.json"
    carol = tokens.add(path, "carol", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    cookie = await sign_in(api, carol)
    resp = await api.post("/session", json={}, headers=cookie)
    error = await error_of(resp, 401, "unauthorized")
    assert "Bearer" in error["message"]
    assert "gq_session" not in resp.cookies
    assert await store.sessions.collection.count_documents({}) == 1
    # Signing out ends the one session there is.
    assert (await api.post("/session/end", json={}, headers=cookie)).status == 200
    await error_of(await api.get("/jobs", headers=cookie), 401)
    assert await store.sessions.collection.count_documents({}) == 0


async def test_a_session_has_its_tokens_current_role(
    make_api: MakeApi, tmp_path: Path, store: Store
) -> None:
    """An edit of the file that changes a role but keeps the token: the session keeps
    working, with the new role."""
    path = tmp_path / "tokens.json"
    dave = tokens.add(path, "dave", Role.SUBMIT)
    api = await make_api(tokens_file=path)
    cookie = await sign_in(api, dave)
    [entry] = tokens.read(path)
    tokens.write(path, [tokens.TokenEntry(entry.name, Role.READ, entry.hash, entry.created_at)])
    await _reload(api)
    assert (await _whoami(api, cookie))["role"] == "read"
    await error_of(await api.post("/jobs", json=SEED_BODY, headers=cookie), 403, "forbidden")
    assert (await api.get("/jobs", headers=cookie)).status == 200
    assert await job_count(store) == 0
