"""The OpenAPI 3.1 document, generated from the models that validate and describe.

The request body schema is `JobRequest.model_json_schema()`, the very model `POST /jobs`
validates with, so the document cannot drift from the validation. Every status a route
can answer is listed with its body, errors included: schemathesis holds the server to it.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from service.api import schemas
from service.api.errors import MAX_BODY_BYTES
from service.api.limits import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_LOG_LIMIT,
    IDEMPOTENCY_KEY_MAX,
    MAX_LIST_LIMIT,
    MAX_LOG_LIMIT,
)
from service.jobs.request import SEED_BODY, JobRequest
from service.jobs.status import Status

REF = "#/components/schemas/{model}"
API_VERSION = "1"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID if it was sane, else a fresh id.",
        "schema": {"type": "string"},
    }
}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return _json(_ref("Error"), description, headers={**REQUEST_ID_HEADER, **headers})


def _ok(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return _json(schema, description, headers={**REQUEST_ID_HEADER, **headers})


ERR_401 = _error(
    "Missing or wrong API token (only when the server has GATEQUEUE_API_TOKEN set).",
    **{"WWW-Authenticate": {"schema": {"type": "string"}}},
)
ERR_404_JOB = _error("No job with this id (a malformed id is an unknown id).")
ERR_422_QUERY = _error("A query parameter is invalid; `fields` names each one.")
ERR_500 = _error("Unexpected server error; the message carries the request id to look up.")
ERR_503 = _error("MongoDB is not reachable; retry later.")


def _param(
    name: str, where: str, schema: dict[str, Any], *, description: str = "", required: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        out["description"] = description
    return out


JOB_ID_PARAM = _param(
    "id",
    "path",
    {"type": "string"},
    description="Job id (24 hex digits). Anything else is answered 404.",
    required=True,
)

FROM_PARAM = _param(
    "from",
    "query",
    {"type": "integer", "minimum": 0, "default": 0},
    description="seq of the first line wanted (0-based).",
)

SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]


def _job_op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A `/jobs` operation: token-protected when configured, may meet an outage."""
    return {
        "summary": summary,
        "security": SECURITY,
        **extra,
        "responses": {**responses, "401": ERR_401, "500": ERR_500, "503": ERR_503},
    }


def _paths() -> dict[str, Any]:
    job = _ref("Job")
    location = {"Location": {"description": "/jobs/<id> of the job.", "schema": {"type": "string"}}}
    submit = _job_op(
        "Submit a training run",
        {
            "201": _ok(job, "Created; `Location` points at the job.", **location),
            "200": _ok(
                job, "Replay of an earlier request with the same Idempotency-Key.", **location
            ),
            "400": _error("Malformed JSON, a body that is not an object, or a bad header."),
            "409": _error(
                "The Idempotency-Key was used before with another body "
                "(code `idempotency_key_reused`)."
            ),
            "413": _error(f"Body larger than {MAX_BODY_BYTES} bytes."),
            "415": _error("Content-Type is not application/json."),
            "422": _error("Invalid hyperparameters; `fields` names every bad field."),
        },
        operationId="submitJob",
        description=(
            "The body is flat camelCase (the seed's body is accepted as is). Unknown keys, "
            'wrong types (no coercion: `"10"` and `true` are not integers) and '
            "out-of-range values are refused with 422 and nothing is stored. With an "
            "`Idempotency-Key` header, retries return the same job."
        ),
        parameters=[
            _param(
                "Idempotency-Key",
                "header",
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": IDEMPOTENCY_KEY_MAX,
                    "pattern": "^[\\x21-\\x7e]+$",
                },
                description="Any string the client picks per logical submission.",
            )
        ],
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref("JobRequest"),
                    "examples": {"seed": {"summary": "The seed's body", "value": SEED_BODY}},
                }
            },
        },
    )
    list_jobs = _job_op(
        "List jobs, newest first",
        {
            "200": _ok(_ref("JobList"), "A page of jobs and the cursor of the next page."),
            "422": ERR_422_QUERY,
        },
        operationId="listJobs",
        parameters=[
            _param("status", "query", {"type": "string", "enum": [s.value for s in Status]}),
            _param(
                "limit",
                "query",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LIST_LIMIT,
                    "default": DEFAULT_LIST_LIMIT,
                },
            ),
            _param(
                "after",
                "query",
                {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"},
                description="The `next` of the previous page.",
            ),
        ],
    )
    get_job = _job_op(
        "One job",
        {"200": _ok(job, "The job."), "404": ERR_404_JOB},
        operationId="getJob",
        parameters=[JOB_ID_PARAM],
    )
    cancel = _job_op(
        "Cancel a job",
        {
            "200": _ok(job, "It was Pending and is now Cancelled."),
            "202": _ok(job, "It is Running: `cancelRequested` is set and its worker stops it."),
            "404": ERR_404_JOB,
            "409": _error("The job has already finished (code `job_finished`)."),
        },
        operationId="cancelJob",
        parameters=[JOB_ID_PARAM],
    )
    logs = _job_op(
        "Stored log lines",
        {
            "200": _ok(_ref("Logs"), "Batches of lines from `from`, in order."),
            "404": ERR_404_JOB,
            "422": ERR_422_QUERY,
        },
        operationId="getJobLogs",
        parameters=[
            JOB_ID_PARAM,
            FROM_PARAM,
            _param(
                "limit",
                "query",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LOG_LIMIT,
                    "default": DEFAULT_LOG_LIMIT,
                },
                description="Most lines to return.",
            ),
        ],
    )
    metrics = _job_op(
        "Per-epoch metrics",
        {"200": _ok(_ref("Metrics"), "One entry per finished epoch."), "404": ERR_404_JOB},
        operationId="getJobMetrics",
        parameters=[JOB_ID_PARAM],
    )
    artifact = _job_op(
        "Download a file of a finished run (the trained network)",
        {
            "200": {
                "description": "The file's bytes.",
                "headers": {
                    **REQUEST_ID_HEADER,
                    "Content-Disposition": {"schema": {"type": "string"}},
                },
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                    }
                },
            },
            "404": _error("No such job, or the job has no artifact of this name."),
        },
        operationId="getJobArtifact",
        parameters=[
            JOB_ID_PARAM,
            _param(
                "name",
                "path",
                {"type": "string"},
                description="An entry's `name` from the job's `artifacts`.",
                required=True,
            ),
        ],
    )
    ws_token = _param(
        "token",
        "query",
        {"type": "string"},
        description="The API token, for browsers (they cannot set headers on a WebSocket).",
    )
    ws_upgraded = {
        "description": "Switched to WebSocket; the messages are described in docs/client.md.",
        "headers": REQUEST_ID_HEADER,
    }
    ws_required = _error("Not a WebSocket upgrade request (code `websocket_required`).")
    logs_ws = _job_op(
        "Tail a job's log over WebSocket: stored lines from `from`, live lines, an end message",
        {
            "101": ws_upgraded,
            "400": ws_required,
            "404": ERR_404_JOB,
            "422": ERR_422_QUERY,
        },
        operationId="tailJobLogs",
        parameters=[
            JOB_ID_PARAM,
            FROM_PARAM,
            ws_token,
        ],
    )
    jobs_ws = _job_op(
        "Job changes over WebSocket (all jobs, or those named by `id`)",
        {
            "101": ws_upgraded,
            "400": ws_required,
            "404": _error("An `id` names no job."),
            "422": ERR_422_QUERY,
        },
        operationId="watchJobs",
        parameters=[
            {
                "name": "id",
                "in": "query",
                "required": False,
                "description": "Job ids to watch, repeated or comma-separated (at most 100); "
                "their current documents are sent first.",
                "schema": {"type": "array", "items": {"type": "string"}},
                "style": "form",
                "explode": True,
            },
            ws_token,
        ],
    )
    health = _ref("Health")
    return {
        "/jobs": {"post": submit, "get": list_jobs},
        "/jobs/{id}": {"get": get_job},
        "/jobs/{id}/cancel": {"post": cancel},
        "/jobs/{id}/logs": {"get": logs},
        "/jobs/{id}/metrics": {"get": metrics},
        "/jobs/{id}/artifacts/{name}": {"get": artifact},
        "/jobs/{id}/logs/ws": {"get": logs_ws},
        "/ws/jobs": {"get": jobs_ws},
        "/": {
            "get": {
                "summary": "The web page: job list, submit form, live log and metric chart",
                "operationId": "webPage",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page (its scripts and styles are under /static/).",
                        "headers": REQUEST_ID_HEADER,
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "500": ERR_500,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "operationId": "healthz",
                "security": [],
                "responses": {"200": _ok(health, "Alive."), "500": ERR_500},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: MongoDB answers a ping within 2 s",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _ok(health, "Ready."),
                    "503": _error("MongoDB did not answer (code `not_ready`)."),
                    "500": ERR_500,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "headers": REQUEST_ID_HEADER,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "500": ERR_500,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": _ok({"type": "object"}, "OpenAPI 3.1 document."),
                    "500": ERR_500,
                },
            }
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """Built once per process: it depends only on the code. Callers must not mutate it."""
    _, top = models_json_schema(
        [(JobRequest, "validation"), *((m, "serialization") for m in schemas.RESPONSE_MODELS)],
        ref_template=REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gatequeue",
            "version": API_VERSION,
            "description": (
                "Queue GPU training runs of differentiable logic gate networks. Every error "
                'has the shape {"error": {"code", "message", "fields"?}}.'
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": top["$defs"],
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "GATEQUEUE_API_TOKEN; needed on /jobs routes when set.",
                }
            },
        },
    }
