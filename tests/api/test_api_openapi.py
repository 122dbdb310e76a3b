"""The OpenAPI document: 3.1, request schema straight from JobRequest, every route and
every status documented with a body; and the serializer the document describes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

from aiohttp.test_utils import TestClient
from bson import ObjectId
from openapi_spec_validator import validate

from service.api.openapi import openapi_document
from service.api.routes import ROUTE_MODULES, ROUTES
from service.api.routing import all_routes
from service.jobs.record import Job, iso, job_json
from service.jobs.request import JobRequest


async def test_served_document_is_openapi_31(api: TestClient) -> None:
    resp = await api.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc == openapi_document(ROUTES)


def test_request_schema_is_the_validating_model() -> None:
    doc = openapi_document(ROUTES)
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobRequest"}
    # the model's own schema, its nested models (`notify`) among the components: as
    # `Name-Input` where their response form differs (a webhook's URL is shown redacted)
    components = doc["components"]["schemas"]
    text = json.dumps(JobRequest.model_json_schema(ref_template="#/components/schemas/{model}"))
    for name in JobRequest.model_json_schema().get("$defs", {}):
        if name not in components:
            text = text.replace(f'/schemas/{name}"', f'/schemas/{name}-Input"')
    expected = json.loads(text)
    for name, schema in expected.pop("$defs", {}).items():
        assert components.get(name, components.get(f"{name}-Input")) == schema, name
    assert components["JobRequest"] == expected
    JobRequest.model_validate(body["examples"]["seed"]["value"])


def test_document_is_valid_openapi_31() -> None:
    validate(openapi_document(ROUTES))


async def test_every_route_method_parameter_and_status_is_documented(api: TestClient) -> None:
    doc = openapi_document(ROUTES)
    served = {
        (route.method.lower(), re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.resource.canonical))
        for route in api.app.router.routes()  # type: ignore[union-attr]
        if route.resource is not None
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented <= served
    # aiohttp answers HEAD of the page's static files itself; every other route is declared
    assert {m for m, _ in served - documented} <= {"head"}
    for route in all_routes(ROUTE_MODULES):
        path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.path)
        op = doc["paths"][path][route.method.lower()]
        names = {p["name"] for p in op.get("parameters", [])}
        assert set(re.findall(r"\{(\w+)", route.path)) <= names, path
        if route.query is not None:
            assert {f.alias or n for n, f in route.query.model_fields.items()} <= names, path
        # every operation may get the HTTP parser's plain-text 400 (PARSER_REFUSAL)
        assert {int(s) for s in op["responses"]} == set(route.statuses) | {400}, path
        assert "text/plain" in op["responses"]["400"]["content"], path
        for status, response in op["responses"].items():
            if status != "101" and route.method != "HEAD":  # no body: an upgrade, a HEAD
                assert response.get("content"), (route.method, path, status)
            assert "X-Request-ID" in response["headers"], (route.method, path, status)
        assert ("401" in op["responses"]) == route.protected


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
