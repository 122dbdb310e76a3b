"""Idempotency-Keys belong to whoever submitted with them and are forgotten after
`GATEQUEUE_IDEMPOTENCY_TTL_S` (issue 26, defect 5), for jobs and sweeps alike."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, bearer, error_of, job_count

from service import tokens
from service.config import DEFAULT_IDEMPOTENCY_TTL_S
from service.jobs.record import utcnow
from service.store import Store
from service.tokens import Role

SWEEP: dict[str, Any] = {
    "name": "nightly",
    "base": {"gateOptimizer": "softmax", "gates": 1000, "networkLayers": 2, "grouping": 10,
             "epochs": 3},
    "grid": {"gates": [1000, 2000]},
}  # fmt: skip
ROUTES = {"/jobs": SEED_BODY, "/sweeps": SWEEP}


@pytest.fixture
async def pair(make_api: MakeApi, tmp_path: Path) -> tuple[TestClient, str, str]:
    path = tmp_path / "tokens.json"
    carol = tokens.add(path, "carol", Role.SUBMIT)
    bob = tokens.add(path, "bob", Role.SUBMIT)
    return await make_api(tokens_file=path), carol, bob


def _other(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "name": "another body"}


async def _post(api: TestClient, route: str, body: dict[str, Any], secret: str | None) -> Any:
    headers = {**JSON, **bearer(secret), "Idempotency-Key": "nightly-1"}
    return await api.post(route, json=body, headers=headers)


@pytest.mark.parametrize("route", ROUTES)
async def test_another_users_key_is_not_theirs(
    pair: tuple[TestClient, str, str], store: Store, route: str
) -> None:
    api, carol, bob = pair
    body = ROUTES[route]
    first = await _post(api, route, body, carol)
    assert first.status == 201, await first.text()
    carols = (await first.json())["id"]

    same = await _post(api, route, body, bob)  # the same key and body: bob's own, new
    assert same.status == 201, await same.text()
    bobs = await same.json()
    assert bobs["id"] != carols and bobs["submittedBy"] == "bob"
    other = await _post(api, route, _other(body), bob)  # another body: still bob's key
    error = await error_of(other, 409, "idempotency_key_reused")
    assert carols not in error["message"] and bobs["id"] in error["message"]
    # Each user's retry still finds their own.
    assert (await (await _post(api, route, body, carol)).json())["id"] == carols
    assert (await (await _post(api, route, body, bob)).json())["id"] == bobs["id"]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_key_is_forgotten_after_its_ttl(api: TestClient, store: Store, route: str) -> None:
    """Open mode is one scope; a key past its TTL makes a new job or sweep, and the old one
    stays as it was."""
    body = ROUTES[route]
    collection = store.db["jobs" if route == "/jobs" else "sweeps"]
    first = await (await _post(api, route, body, None)).json()

    async def age(by: timedelta) -> None:
        await collection.update_many({}, {"$set": {"createdAt": utcnow() - by}})

    ttl = timedelta(seconds=DEFAULT_IDEMPOTENCY_TTL_S)
    await age(ttl - timedelta(minutes=5))
    replay = await _post(api, route, body, None)
    assert replay.status == 200 and (await replay.json())["id"] == first["id"]

    await age(ttl + timedelta(minutes=5))
    again = await _post(api, route, _other(body), None)  # past the TTL, any body is new
    assert again.status == 201, await again.text()
    second = await again.json()
    assert second["id"] != first["id"]
    assert (await api.get(f"{route}/{first['id']}")).status == 200
    replay = await _post(api, route, _other(body), None)  # the key now names the new one
    assert replay.status == 200 and (await replay.json())["id"] == second["id"]
    if route == "/jobs":
        assert await job_count(store) == 2
