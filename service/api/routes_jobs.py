"""The `/jobs` routes: submit, list, inspect, cancel, stored logs and metrics.

Every handler checks the token first (before reading a body), answers with
`service.serialize`'s JSON, and raises `ApiError` for anything a client did wrong; the
error middleware turns that into the one error shape.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from bson import ObjectId
from pydantic import ValidationError

from service.api.auth import check_token
from service.api.errors import ApiError, json_response, validation_error
from service.api.keys import STORE
from service.api.limits import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_LOG_LIMIT,
    IDEMPOTENCY_KEY_MAX,
    MAX_LIST_LIMIT,
    MAX_LOG_LIMIT,
)
from service.jobs.record import JobRecord, new_job
from service.jobs.request import JobRequest, field_errors
from service.jobs.status import Status
from service.store.jobs import CancelOutcome, IdempotencyKeyReused, parse_job_id, request_hash
from service.store.logs import batch_json
from service.store.metrics import metrics_json

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")
_UINT_RE = re.compile(r"[0-9]{1,9}")
_STATUSES = frozenset(s.value for s in Status)


# -- request parsing -------------------------------------------------------------------


def _require_json(request: web.Request) -> None:
    """JSON only, and the header is required: a POST without Content-Type (or with a form
    type) is a CORS "simple request" any web page can send to a gatequeue on localhost,
    while `application/json` makes browsers ask first (and we never say yes)."""
    if "Content-Type" not in request.headers:
        raise ApiError(
            415,
            "unsupported_media_type",
            "missing Content-Type; send 'Content-Type: application/json'",
        )
    mime = request.content_type
    if mime != "application/json" and not (
        mime.startswith("application/") and mime.endswith("+json")
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {mime!r} is not JSON; send 'Content-Type: application/json'",
        )


def _body_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return ApiError(400, "invalid_json", f"malformed JSON: {err['msg']}")
    if any(err["loc"] == () and err["type"] == "model_type" for err in errors):
        return ApiError(400, "invalid_body", "the body must be a JSON object")
    return validation_error(field_errors(exc))


def _query_uint(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _UINT_RE.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise validation_error(
            [
                {
                    "field": name,
                    "message": f"must be an integer from {lo} to {hi}",
                    "type": "query_int",
                }
            ]
        )
    return int(raw)


def _job_id(request: web.Request) -> ObjectId:
    """Malformed ids are unknown ids: 404, the same as a well-formed id nobody has."""
    raw = request.match_info["id"]
    oid = parse_job_id(raw) if len(raw) == 24 else None
    if oid is None:
        raise _not_found(raw)
    return oid


def _not_found(raw: object) -> ApiError:
    return ApiError(404, "job_not_found", f"no job with id {str(raw)[:64]!r}")


# -- handlers ----------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    check_token(request)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not _KEY_RE.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            "without spaces",
        )
    _require_json(request)
    body = await request.read()  # aiohttp raises 413 past client_max_size
    try:
        job_request = JobRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _body_error(exc) from None
    job = new_job(job_request.hyperparameters(), job_request.run_options())
    body_hash = None if key is None else request_hash(job_request.model_dump())
    try:
        job, created = await request.app[STORE].jobs.insert(
            job, idempotency_key=key, body_hash=body_hash
        )
    except IdempotencyKeyReused as exc:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for job {exc.job.id} with a different body",
        ) from None
    return _created(job, 201 if created else 200)


def _created(job: JobRecord, status: int) -> web.Response:
    return json_response(job.to_json(), status=status, headers={"Location": f"/jobs/{job.id}"})


async def list_jobs(request: web.Request) -> web.Response:
    check_token(request)
    problems: list[dict[str, str]] = []
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        problems.append(
            {
                "field": "status",
                "message": f"must be one of {', '.join(sorted(_STATUSES))}",
                "type": "enum",
            }
        )
    after_raw = request.query.get("after")
    after = None
    if after_raw is not None:
        after = parse_job_id(after_raw) if len(after_raw) == 24 else None
        if after is None:
            problems.append(
                {"field": "after", "message": "must be a job id (24 hex digits)", "type": "id"}
            )
    try:
        limit = _query_uint(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    except ApiError as exc:
        problems += exc.fields or []
        limit = DEFAULT_LIST_LIMIT
    if problems:
        raise validation_error(problems)
    # One extra row says whether there is a next page, so the last page has `next: null`.
    jobs = await request.app[STORE].jobs.list(
        status=None if status is None else Status(status), limit=limit + 1, after=after
    )
    page = jobs[:limit]
    more = len(jobs) > limit
    return json_response(
        {
            "jobs": [j.to_json() for j in page],
            "next": str(page[-1].id) if more and page else None,
        }
    )


async def get_job(request: web.Request) -> web.Response:
    check_token(request)
    oid = _job_id(request)
    job = await request.app[STORE].jobs.get(oid)
    if job is None:
        raise _not_found(oid)
    return json_response(job.to_json())


async def cancel_job(request: web.Request) -> web.Response:
    check_token(request)
    oid = _job_id(request)
    result = await request.app[STORE].jobs.request_cancel(oid)
    outcome = result.outcome
    if outcome is CancelOutcome.NOT_FOUND or result.job is None:
        raise _not_found(oid)
    if outcome is CancelOutcome.FINISHED:
        raise ApiError(
            409, "job_finished", f"job {oid} has already finished ({result.job.status.value})"
        )
    status = 200 if outcome is CancelOutcome.CANCELLED else 202
    return json_response(result.job.to_json(), status=status)


async def job_logs(request: web.Request) -> web.Response:
    check_token(request)
    oid = _job_id(request)
    problems: list[dict[str, str]] = []
    values: dict[str, int] = {}
    for name, default, lo, hi in (
        ("from", 0, 0, 999_999_999),
        ("limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT),
    ):
        try:
            values[name] = _query_uint(request, name, default, lo, hi)
        except ApiError as exc:
            problems += exc.fields or []
    store = request.app[STORE]
    if not await store.jobs.exists(oid):
        raise _not_found(oid)
    if problems:
        raise validation_error(problems)
    start = values["from"]
    batches = await store.logs.read(oid, start, values["limit"])
    out: list[dict[str, Any]] = [batch_json(b) for b in batches]
    nxt = out[-1]["seq"] + len(out[-1]["lines"]) if out else start
    return json_response({"jobId": str(oid), "from": start, "next": nxt, "batches": out})


async def job_metrics(request: web.Request) -> web.Response:
    check_token(request)
    oid = _job_id(request)
    store = request.app[STORE]
    if not await store.jobs.exists(oid):
        raise _not_found(oid)
    rows = await store.metrics.list(oid)
    return json_response({"jobId": str(oid), "metrics": [metrics_json(r) for r in rows]})


async def job_artifact(request: web.Request) -> web.StreamResponse:
    """Streams a file of a finished run from GridFS, chunk by chunk (a network of a million
    gates is tens of MB; it never sits whole in the API's memory)."""
    check_token(request)
    oid = _job_id(request)
    name = request.match_info["name"]
    store = request.app[STORE]
    job = await store.jobs.get(oid)
    if job is None:
        raise _not_found(oid)
    # Only files the job's `artifacts` names are served: a GridFS filename is not a
    # capability, and a file of a run that lost its finish race is not the job's.
    artifact = next((a for a in job.artifacts if a.name == name), None)
    if artifact is None:
        raise ApiError(404, "artifact_not_found", f"job {oid} has no artifact {name!r}")
    grid_out = await store.files.open(artifact.bucket, artifact.fileId)
    filename = name.rsplit("/", 1)[-1].replace('"', "")
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
    )
    response.content_length = grid_out.length
    await response.prepare(request)
    while chunk := await grid_out.readchunk():
        await response.write(chunk)
    await response.write_eof()
    return response


async def _close_store(app: web.Application) -> None:
    await app[STORE].close()


def setup(app: web.Application) -> None:
    app.on_cleanup.append(_close_store)
    app.router.add_post("/jobs", submit_job)
    app.router.add_get("/jobs", list_jobs, allow_head=False)
    app.router.add_get("/jobs/{id}", get_job, allow_head=False)
    app.router.add_post("/jobs/{id}/cancel", cancel_job)
    app.router.add_get("/jobs/{id}/logs", job_logs, allow_head=False)
    app.router.add_get("/jobs/{id}/metrics", job_metrics, allow_head=False)
    app.router.add_get("/jobs/{id}/artifacts/{name:.+}", job_artifact, allow_head=False)
