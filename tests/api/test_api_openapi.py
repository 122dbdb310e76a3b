"""The OpenAPI document: 3.1, request schema straight from JobRequest, every route and
every status documented with a body; and the serializer the document describes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from aiohttp.test_utils import TestClient
from bson import ObjectId

from service.api.openapi import openapi_document
from service.jobs.record import Job, iso, job_json
from service.jobs.request import JobRequest


async def test_served_document_is_openapi_31(api: TestClient) -> None:
    resp = await api.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc == openapi_document()


def test_request_schema_is_the_validating_model() -> None:
    doc = openapi_document()
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobRequest"}
    assert doc["components"]["schemas"]["JobRequest"] == JobRequest.model_json_schema()
    JobRequest.model_validate(body["examples"]["seed"]["value"])


async def test_every_route_is_documented(api: TestClient) -> None:
    doc = openapi_document()
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()  # type: ignore[union-attr]
        if route.resource is not None
        and not route.resource.canonical.startswith("/ws")
        and not route.resource.canonical.endswith("/ws")
        and route.resource.canonical != "/"
        and not route.resource.canonical.startswith("/static")
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes <= documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "500" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if status == "101":  # a WebSocket upgrade: no body
                    continue
                assert response.get("content"), (method, path, status)
                assert "X-Request-ID" in response["headers"], (method, path, status)
            if path.startswith("/jobs"):
                assert "401" in op["responses"]


def test_job_json() -> None:
    oid = ObjectId()
    created = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
    doc = {
        "_id": oid,
        "name": None,
        "status": "Running",
        "version": 1,
        "hyperparameters": {"gateOptimizer": "softmax"},
        "createdAt": created,
        "updatedAt": created,
        "startedAt": created,
        "finishedAt": None,
        "worker": {"id": "w", "host": "h", "gpu": "0"},
        "leaseExpiresAt": created + timedelta(seconds=30),
        "attempt": 1,
        "maxAttempts": 3,
        "cancelRequested": False,
        "exitCode": None,
        "error": None,
        "latestMetrics": {"epoch": 1, "train_loss": 0.5},
        "idempotencyKey": "k",
        "requestHash": "h",
    }
    out = job_json(doc)
    Job.model_validate(out)
    assert out["id"] == str(oid)
    assert out["createdAt"] == "2025-01-31T12:00:00.123Z"
    assert out["leaseExpiresAt"] == "2025-01-31T12:00:30.123Z"
    assert "idempotencyKey" not in out and "requestHash" not in out and "_id" not in out


def test_iso_normalises_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert iso(datetime(2025, 1, 1, 14, 0, tzinfo=plus_two)) == "2025-01-01T12:00:00.000Z"
    assert iso(datetime(2025, 1, 1, 12, 0)) == "2025-01-01T12:00:00.000Z"  # naive = UTC
