"""Constants and small helpers shared by the API tests (imported as `api_helpers`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from types import ModuleType
from typing import Any, Protocol

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from service.api.schemas import Error
from service.store import Store

# The seed README's request body, byte for byte as its curl sent it.
SEED_CURL_BODY = (
    b'{"gateOptimizer": "sparsemax_noise", "gates": 3332, "networkLayers": 4, '
    b'"grouping": 10, "groupSumTau": 100, "residualLayers": 4, "noiseTemp": 0.2, '
    b'"epochs": 5}'
)
SEED_BODY: dict[str, Any] = json.loads(SEED_CURL_BODY)
JSON = {"Content-Type": "application/json"}


async def job_count(store: Store) -> int:
    return await store.jobs.collection.count_documents({})


async def error_of(resp: ClientResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the one error shape (and status, code); return the `error` object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    Error.model_validate(body)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


class MakeApi(Protocol):
    def __call__(
        self,
        *,
        token: str | None = None,
        store: Store | None = None,
        route_modules: list[ModuleType] | None = None,
        ready_timeout_s: float = 2.0,
        **overrides: Any,
    ) -> Awaitable[TestClient]: ...


def bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


async def sign_in(api: TestClient, secret: str) -> dict[str, str]:
    """`POST /session` with the token, as the web page does; returns the headers that send
    the session cookie (the client's own jar is emptied, so only they carry it)."""
    resp = await api.post("/session", json={}, headers=bearer(secret))
    assert resp.status == 201, await resp.text()
    cookie = resp.cookies["gq_session"].value
    api.session.cookie_jar.clear()
    return {"Cookie": f"gq_session={cookie}"}
