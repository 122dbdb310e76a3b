"""POST /jobs: the seed's body, every refusal (with nothing stored), idempotent retries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, SEED_CURL_BODY, error_of, job_count

from service.api.errors import MAX_BODY_BYTES
from service.api.schemas import Job
from service.store import Store


async def test_seed_curl_body_as_written(api: TestClient, store: Store) -> None:
    resp = await api.post("/jobs", data=SEED_CURL_BODY, headers=JSON)
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    Job.model_validate(job)
    assert resp.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "Pending"
    assert job["version"] == 0
    assert job["attempt"] == 0
    assert job["maxAttempts"] == 3
    assert job["cancelRequested"] is False
    assert job["createdAt"].endswith("Z")
    assert "idempotencyKey" not in job and "requestHash" not in job
    # Every field of the seed's body is stored as sent; the rest are the defaults.
    for key, value in SEED_BODY.items():
        assert job["hyperparameters"][key] == value
    assert job["hyperparameters"]["dataset"] == "digits"
    assert "name" not in job["hyperparameters"]
    assert await job_count(store) == 1

    again = await api.get(resp.headers["Location"])
    assert again.status == 200
    # a Pending job read alone says where it stands in the queue
    assert await again.json() == {**job, "queuePosition": 0, "waitingFor": "a free slot"}


async def test_optional_fields_and_run_options(api: TestClient, store: Store) -> None:
    body = {
        **SEED_BODY,
        "dataset": "digits",
        "batchSize": 64,
        "learningRate": 0.05,
        "seed": 7,
        "name": "sweep-1",
        "maxAttempts": 5,
    }
    resp = await api.post("/jobs", json=body)
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    assert job["name"] == "sweep-1"
    assert job["maxAttempts"] == 5
    assert job["hyperparameters"]["batchSize"] == 64
    assert "maxAttempts" not in job["hyperparameters"]
    stored = await store.jobs.get(job["id"])
    assert stored is not None and stored.maxAttempts == 5 and stored.name == "sweep-1"


def _with(**changes: Any) -> dict[str, Any]:
    body = dict(SEED_BODY)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

INVALID_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", _with(gateOptimiser="softmax"), "gateOptimiser"),
    ("gates as string", _with(gates="10"), "gates"),
    ("gates as bool", _with(gates=True), "gates"),
    ("gates as float", _with(gates=10.5), "gates"),
    ("gates zero", _with(gates=0), "gates"),
    ("gates negative", _with(gates=-3), "gates"),
    ("epochs zero", _with(epochs=0), "epochs"),
    ("epochs negative", _with(epochs=-1), "epochs"),
    ("residual > layers", _with(residualLayers=5), "residualLayers"),
    ("unknown optimizer", _with(gateOptimizer="adam"), "gateOptimizer"),
    ("missing optimizer", _with(gateOptimizer=_DROP), "gateOptimizer"),
    ("optimizer null", _with(gateOptimizer=None), "gateOptimizer"),
    ("noiseTemp negative", _with(noiseTemp=-0.1), "noiseTemp"),
    ("maxAttempts zero", _with(maxAttempts=0), "maxAttempts"),
    ("name too long", _with(name="x" * 201), "name"),
    # conv networks (trainer.convspec): every misfit named on the option to change
    (
        "conv on tabular data",
        _with(architecture="conv", dataset="breast_cancer", grouping=2),
        "architecture",
    ),
    ("conv kernel > image", _with(architecture="conv", kernelSize=11), "kernelSize"),
    ("conv pools below 1x1", _with(architecture="conv", convChannels="4,4,4,4"), "poolSize"),
    ("conv channels malformed", _with(architecture="conv", convChannels="16,,32"), "convChannels"),
    (
        "conv tree too deep",
        _with(architecture="conv", kernelSize=1, convPadding=0, treeDepth=3),
        "treeDepth",
    ),
    (
        "conv channels too many",
        _with(architecture="conv", convChannels="9999,9999", dataset="mnist"),
        "convChannels",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INVALID_BODIES], ids=[i for i, _, _ in INVALID_BODIES]
)
async def test_invalid_body_is_422_naming_the_field(
    api: TestClient, store: Store, body: dict[str, Any], field: str
) -> None:
    error = await error_of(await api.post("/jobs", json=body), 422, "validation_error")
    assert [f["field"] for f in error["fields"]] == [field]
    assert field in error["message"]
    assert await job_count(store) == 0


async def test_one_422_names_every_bad_field(api: TestClient, store: Store) -> None:
    body = _with(gates="10", epochs=0, gateOptimizer="adam", colour="red", noiseTemp=True)
    error = await error_of(await api.post("/jobs", json=body), 422, "validation_error")
    named = {f["field"] for f in error["fields"]}
    assert named == {"gates", "epochs", "gateOptimizer", "colour", "noiseTemp"}
    unknown = next(f for f in error["fields"] if f["field"] == "colour")
    assert unknown == {"field": "colour", "message": "unknown field", "type": "extra_forbidden"}
    assert await job_count(store) == 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"gateOptimizer": "softmax",', "invalid_json"),
        (b"", "invalid_json"),
        (b"{'gateOptimizer': 'softmax'}", "invalid_json"),
        (b'"softmax"', "invalid_body"),
        (b"[1, 2]", "invalid_body"),
        (b"null", "invalid_body"),
        (b"42", "invalid_body"),
    ],
    ids=["truncated", "empty", "single quotes", "string", "array", "null", "number"],
)
async def test_malformed_or_non_object_json_is_400(
    api: TestClient, store: Store, raw: bytes, code: str
) -> None:
    await error_of(await api.post("/jobs", data=raw, headers=JSON), 400, code)
    assert await job_count(store) == 0


async def test_oversize_body_is_413(api: TestClient, store: Store) -> None:
    body = json.dumps({**SEED_BODY, "name": "x" * MAX_BODY_BYTES}).encode()
    error = await error_of(await api.post("/jobs", data=body, headers=JSON), 413)
    assert error["code"] == "payload_too_large"
    assert str(MAX_BODY_BYTES) in error["message"]
    assert await job_count(store) == 0


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_non_json_content_type_is_415(
    api: TestClient, store: Store, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    # skip_auto_headers keeps aiohttp from adding application/octet-stream by itself.
    resp = await api.post(
        "/jobs", data=SEED_CURL_BODY, headers=headers, skip_auto_headers=["Content-Type"]
    )
    error = await error_of(resp, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert await job_count(store) == 0


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json"]
)
async def test_json_content_types_with_parameters_are_accepted(
    api: TestClient, content_type: str
) -> None:
    resp = await api.post("/jobs", data=SEED_CURL_BODY, headers={"Content-Type": content_type})
    assert resp.status == 201, await resp.text()


async def test_idempotent_retries_racing_give_one_job(api: TestClient, store: Store) -> None:
    headers = {"Idempotency-Key": "retry-me-7"}
    responses = await asyncio.gather(
        *(api.post("/jobs", json=SEED_BODY, headers=headers) for _ in range(10))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 9 + [201]
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert {r.headers["Location"] for r in responses} == {f"/jobs/{ids.pop()}"}
    assert await job_count(store) == 1


async def test_idempotent_replay_ignores_key_order_and_whitespace(
    api: TestClient, store: Store
) -> None:
    first = await api.post("/jobs", data=SEED_CURL_BODY, headers={**JSON, "Idempotency-Key": "k"})
    assert first.status == 201
    reordered = json.dumps(dict(reversed(list(SEED_BODY.items())))).encode()
    again = await api.post("/jobs", data=reordered, headers={**JSON, "Idempotency-Key": "k"})
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]
    # Without a key, the same body is a new job.
    other = await api.post("/jobs", json=SEED_BODY)
    assert other.status == 201
    assert await job_count(store) == 2


async def test_idempotency_key_reused_with_another_body_is_409(
    api: TestClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "once"}
    assert (await api.post("/jobs", json=SEED_BODY, headers=headers)).status == 201
    resp = await api.post("/jobs", json={**SEED_BODY, "epochs": 6}, headers=headers)
    error = await error_of(resp, 409, "idempotency_key_reused")
    assert "once" in error["message"]
    assert await job_count(store) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\tkey"])
async def test_bad_idempotency_key_is_400(api: TestClient, store: Store, key: str) -> None:
    resp = await api.post("/jobs", json=SEED_BODY, headers={"Idempotency-Key": key})
    await error_of(resp, 400, "invalid_idempotency_key")
    assert await job_count(store) == 0
