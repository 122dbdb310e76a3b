"""The `/jobs` routes: submit, list, inspect, cancel, stored logs, metrics and files.

The token is checked by the routing layer before a handler runs; each answers with the job
record's JSON (service.jobs.record), and raises `ApiError` for anything a client did
wrong; the error middleware turns that into the one error shape. `ROUTES` declares them
for the router and the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import structlog
from aiohttp import web
from bson import ObjectId
from pydantic import Field

from service.api.auth import principal_of, require_owner
from service.api.body import parse_body
from service.api.connections import read_body
from service.api.datasets import resolve_dataset
from service.api.errors import MAX_BODY_BYTES, ApiError, json_response
from service.api.keys import METRICS, QUOTA, RETENTION, SETTINGS, SLOTS, STORE
from service.api.limits import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_LOG_LIMIT,
    IDEMPOTENCY_KEY_MAX,
    MAX_LIST_LIMIT,
    MAX_LOG_LIMIT,
    MAX_SEQ,
)
from service.api.ranges import Unsatisfiable, requested_range
from service.api.routing import (
    ID_PATTERN,
    Handler,
    Param,
    Query,
    Reply,
    Route,
    not_found,
    path_id,
)
from service.api.schemas import Deleted, JobList, Logs, Metrics
from service.api.webhooks import check_notifies
from service.cancellation import cancel_and_wait
from service.jobs import memory
from service.jobs.record import Job, JobRecord, MemoryEstimate, new_job
from service.jobs.request import SEED_BODY, JobRequest, describe_options
from service.jobs.retention import Policy, Retention
from service.jobs.status import Status
from service.store.errors import FileGone
from service.store.files import CHECKPOINTS_BUCKET
from service.store.jobs import CancelOutcome, IdempotencyKeyReused, request_hash
from service.store.logs import batch_json
from service.store.metrics import metrics_json
from service.tokens import Role
from trainer.data.catalog import DataShape
from trainer.presets import describe as describe_presets

log = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")
StatusName = Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]


class ListQuery(Query):
    status: StatusName | None = Field(None, description="Only jobs with this status.")  # type: ignore[valid-type]
    sweep: str | None = Field(None, pattern=ID_PATTERN, description="Only this sweep's jobs.")
    submittedBy: str | None = Field(
        None, max_length=64, description="Only jobs submitted with this token name."
    )
    limit: int = Field(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)
    after: str | None = Field(
        None, pattern=ID_PATTERN, description="The `next` of the previous page."
    )


class FromQuery(Query):
    from_: int = Field(
        0, alias="from", ge=0, le=MAX_SEQ, description="seq of the first line wanted (0-based)."
    )


class LogsQuery(FromQuery):
    limit: int = Field(
        DEFAULT_LOG_LIMIT, ge=1, le=MAX_LOG_LIMIT, description="Most lines to return."
    )


def job_id_of(request: web.Request) -> ObjectId:
    return path_id(request, "job")


async def existing_job_id(request: web.Request) -> ObjectId:
    oid = job_id_of(request)
    if not await request.app[STORE].jobs.exists(oid):
        raise not_found("job", oid)
    return oid


# -- handlers ----------------------------------------------------------------------------


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not _KEY_RE.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            "without spaces",
        )
    return key


async def submit_job(request: web.Request) -> web.Response:
    principal = principal_of(request)
    key = idempotency_key(request)
    quota = request.app[QUOTA]
    quota.charge(principal.name)  # first: a refused submission counts too
    body = await read_body(request)
    job_request = parse_body(JobRequest, body)
    notify = getattr(job_request, "notify", None)
    if notify is not None:
        await check_notifies(request, iter([("notify", notify)]))
    hyperparameters, run_options = job_request.split()
    dataset_ref, shape = await resolve_dataset(request.app[STORE], hyperparameters)
    estimate = await admit_memory(request, hyperparameters, shape)
    await quota.admit(principal.name)
    job = new_job(
        hyperparameters, run_options, submitted_by=principal.name, memory_estimate=estimate,
        dataset_ref=dataset_ref,
    )  # fmt: skip
    body_hash = None if key is None else request_hash(job_request.model_dump())
    try:
        job, created = await request.app[STORE].jobs.insert(
            job, idempotency_key=key, body_hash=body_hash,
            key_ttl_s=request.app[SETTINGS].idempotency_ttl_s,
        )  # fmt: skip
    except IdempotencyKeyReused as exc:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for job {exc.job.id} with a different body",
        ) from None
    return _created(job, 201 if created else 200)


async def admit_memory(
    request: web.Request, hyperparameters: dict[str, Any], shape: DataShape | None = None
) -> MemoryEstimate:
    """The job's estimated peak memory; a 422 if no live worker's slot could hold it."""
    try:
        return memory.admit(hyperparameters, await request.app[SLOTS].slots(), shape)
    except memory.TooBig as exc:
        raise ApiError(422, "too_big_for_workers", str(exc), fields=exc.fields) from None


def _created(job: JobRecord, status: int) -> web.Response:
    return json_response(job.to_json(), status=status, headers={"Location": f"/jobs/{job.id}"})


async def list_jobs(request: web.Request, query: ListQuery) -> web.Response:
    # One extra row says whether there is a next page, so the last page has `next: null`.
    jobs = await request.app[STORE].jobs.list(
        status=query.status,
        limit=query.limit + 1,
        after=query.after,
        submitted_by=query.submittedBy,
        sweep_id=None if query.sweep is None else ObjectId(query.sweep),
    )
    page = jobs[: query.limit]
    more = len(jobs) > query.limit
    return json_response(
        {"jobs": [j.to_json() for j in page], "next": str(page[-1].id) if more and page else None}
    )


async def get_job(request: web.Request) -> web.Response:
    oid = job_id_of(request)
    store = request.app[STORE]
    job = await store.jobs.get(oid)
    if job is None:
        raise not_found("job", oid)
    if job.status is Status.PENDING:
        job = await store.queue.explain(job)
    return json_response(job.to_json())


async def cancel_job(request: web.Request) -> web.Response:
    """Anyone with the submit role cancels their own jobs; another's needs admin."""
    oid = job_id_of(request)
    principal = principal_of(request)
    if not principal.may(Role.ADMIN):
        job = await request.app[STORE].jobs.get(oid)
        if job is None:
            raise not_found("job", oid)
        require_owner(principal, job.submittedBy, f"job {oid}")
    result = await request.app[STORE].jobs.request_cancel(oid)
    if result.outcome is CancelOutcome.NOT_FOUND or result.job is None:
        raise not_found("job", oid)
    if result.outcome is CancelOutcome.FINISHED:
        raise ApiError(
            409, "job_finished", f"job {oid} has already finished ({result.job.status.value})"
        )
    status = 200 if result.outcome is CancelOutcome.CANCELLED else 202
    return json_response(result.job.to_json(), status=status)


async def delete_job(request: web.Request) -> web.Response:
    """The owner or an admin. A job not finished is cancelled first: a Pending one at once;
    a Running one's worker is asked to stop, and once the record is gone its renewals and
    writes are refused, so it stops without writing and deletes what it was uploading."""
    oid = job_id_of(request)
    principal = principal_of(request)
    store = request.app[STORE]
    job = await store.jobs.get(oid)
    if job is None:
        raise not_found("job", oid)
    require_owner(principal, job.submittedBy, f"job {oid}", "deleting")
    if not job.finished:
        await store.jobs.request_cancel(oid)
    removed = await store.removal.jobs([oid])
    if removed.jobs == 0:  # deleted meanwhile by another request
        raise not_found("job", oid)
    log.info("job deleted", job_id=str(oid), by=principal.name, **removed.to_json())
    return json_response({"id": str(oid), "removed": removed.to_json()})


async def job_logs(request: web.Request, query: LogsQuery) -> web.Response:
    oid = await existing_job_id(request)
    batches = await request.app[STORE].logs.read(oid, query.from_, query.limit)
    out: list[dict[str, Any]] = [batch_json(b) for b in batches]
    nxt = out[-1]["seq"] + len(out[-1]["lines"]) if out else query.from_
    return json_response({"jobId": str(oid), "from": query.from_, "next": nxt, "batches": out})


async def job_metrics(request: web.Request) -> web.Response:
    oid = await existing_job_id(request)
    rows = await request.app[STORE].metrics.list(oid)
    return json_response({"jobId": str(oid), "metrics": [metrics_json(r) for r in rows]})


async def job_artifact(request: web.Request) -> web.StreamResponse:
    """Streams a file of a finished run from GridFS, chunk by chunk (a network of a million
    gates is tens of MB; it never sits whole in the API's memory)."""
    oid = job_id_of(request)
    name = request.match_info["name"]
    store = request.app[STORE]
    job = await store.jobs.get(oid)
    if job is None:
        raise not_found("job", oid)
    # Only files the job's `artifacts` names are served: a GridFS filename is not a
    # capability, and a file of a run that lost its finish race is not the job's.
    artifact = next((a for a in job.artifacts if a.name == name), None)
    if artifact is None:
        raise ApiError(404, "artifact_not_found", f"job {oid} has no artifact {name!r}")
    return await _stream_file(request, artifact.bucket, artifact.fileId, name)


async def job_checkpoint(request: web.Request) -> web.StreamResponse:
    """The job's latest checkpoint: to resume it by hand (`python -m trainer --resume-from`)
    or keep it."""
    oid = job_id_of(request)
    job = await request.app[STORE].jobs.get(oid)
    if job is None:
        raise not_found("job", oid)
    if job.checkpoint is None:
        raise ApiError(404, "checkpoint_not_found", f"job {oid} has no checkpoint (yet)")
    c = job.checkpoint
    name = f"{oid}-epoch-{c.epoch}-step-{c.step}.pt"
    return await _stream_file(request, CHECKPOINTS_BUCKET, c.fileId, name)


async def _stream_file(
    request: web.Request, bucket: str, file_id: ObjectId, name: str
) -> web.StreamResponse:
    """The file, or the one range of it that `Range` asks for (service.api.ranges); HEAD
    gets the headers alone. A stored file never changes, so its id is its ETag."""
    try:
        grid_out = await request.app[STORE].files.open(bucket, file_id)
    except FileGone:  # its record names a file removed since (a delete, retention)
        raise ApiError(404, "file_not_found", f"{name} is no longer stored") from None
    length = grid_out.length
    etag = f'"{file_id}"'
    if_range = request.headers.get("If-Range")
    try:
        wanted = (
            requested_range(request.headers.get("Range"), length)
            if if_range is None or if_range == etag
            else None
        )
    except Unsatisfiable:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the file has {length} bytes: the range asks for none of them",
            headers={"Content-Range": f"bytes */{length}", "Accept-Ranges": "bytes"},
        ) from None
    first, last = wanted if wanted is not None else (0, length - 1)
    filename = name.rsplit("/", 1)[-1].replace('"', "")
    response = web.StreamResponse(
        status=200 if wanted is None else 206,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Accept-Ranges": "bytes",
            "ETag": etag,
        },
    )
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {first}-{last}/{length}"
    response.content_length = last - first + 1
    await response.prepare(request)
    if request.method != "HEAD":
        if first:
            await grid_out.seek(first)
        remaining = last - first + 1
        while remaining > 0 and (chunk := await grid_out.readchunk()):
            await response.write(chunk[:remaining])
            remaining -= len(chunk)
    await response.write_eof()
    return response


# The named conv configurations (trainer.presets) the form offers; their gate counts are
# computed once.
PRESETS_FORM = describe_presets()


async def options(request: web.Request) -> web.Response:
    """What a job request may carry (the web form is built from it) and the status names."""
    return json_response(
        {
            **describe_options(),
            "presets": PRESETS_FORM,
            "statuses": [s.value for s in Status],
            "finished": [s.value for s in Status if s.finished],
        }
    )


# -- declarations ------------------------------------------------------------------------

IDEMPOTENCY_PARAM = Param(
    IDEMPOTENCY_HEADER, "header", "Any string the client picks per logical submission.",
    {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX,
     "pattern": "^[\\x21-\\x7e]+$"},
)  # fmt: skip
JOB_ID = Param(
    "id", "path", "Job id (24 hex digits). Anything else is answered 404.", required=True
)
ERR_404_JOB = Reply(404, "No job with this id (a malformed id is an unknown id).", "Error")
ERR_422_QUERY = Reply(422, "A query parameter is invalid; `fields` names each one.", "Error")
ERR_408_BODY = Reply(
    408, "The body did not arrive within the body timeout (code `body_timeout`).", "Error"
)


def _job(status: int, description: str, *headers: str) -> Reply:
    return Reply(status, description, Job, headers=headers)


def _downloads(
    path: str,
    handler: Handler,
    name: str,
    what: str,
    params: tuple[Param, ...],
    whole: str,
    missing: Reply,
) -> tuple[Route, Route]:
    """GET and HEAD of a file download, with `Range` (service.api.ranges)."""
    octets = "application/octet-stream"
    replies = (
        Reply(
            200,
            f"{whole} `Accept-Ranges: bytes`: a `Range` header gets a part of it.",
            None,
            octets,
            ("Content-Disposition", "Accept-Ranges", "ETag"),
        ),
        Reply(
            206,
            "The one range that `Range: bytes=first-last` (or `first-`, `-suffix`) "
            "asks for; `Content-Range` says which. Several ranges, or an `If-Range` "
            "that is not the file's ETag, get the whole file (200).",
            None,
            octets,
            ("Content-Disposition", "Accept-Ranges", "ETag", "Content-Range"),
        ),
        missing,
        Reply(
            416,
            "The range starts past the end of the file (code `range_not_satisfiable`); "
            "`Content-Range: bytes */LENGTH` gives the length.",
            "Error",
            headers=("Content-Range", "Accept-Ranges"),
        ),
    )
    return (
        Route("GET", path, handler, f"get{name}", f"Download {what}", params=params,
              replies=replies),
        Route("HEAD", path, handler, f"head{name}",
              f"The headers of {what}'s download (its length, `Accept-Ranges`), no body",
              params=params, replies=replies),
    )  # fmt: skip


ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/jobs", submit_job, "submitJob", "Submit a training run", role=Role.SUBMIT,
        description=(
            "The body is flat camelCase (the seed's body is accepted as is). Unknown keys, "
            'wrong types (no coercion: `"10"` and `true` are not integers) and '
            "out-of-range values are refused with 422 and nothing is stored. With an "
            "`Idempotency-Key` header, retries return the same job."
        ),
        body=JobRequest,
        body_examples={"seed": {"summary": "The seed's body", "value": SEED_BODY}},
        params=(IDEMPOTENCY_PARAM,),
        replies=(
            _job(201, "Created; `Location` points at the job.", "Location"),
            _job(200, "Replay of an earlier request with the same Idempotency-Key.", "Location"),
            Reply(400, "Malformed JSON, a body that is not an object, or a bad header.", "Error"),
            ERR_408_BODY,
            Reply(409, "The Idempotency-Key was used before with another body "
                       "(code `idempotency_key_reused`).", "Error"),
            Reply(413, f"Body larger than {MAX_BODY_BYTES} bytes.", "Error"),
            Reply(415, "Content-Type is not application/json.", "Error"),
            Reply(422, "Invalid options; `fields` names every bad field. Also a job no live "
                       "worker's slot could hold (code `too_big_for_workers`: its estimated "
                       "peak memory, and `fields` naming batchSize, gates, networkLayers); "
                       "or a `notify` URL the server will not call (code `webhook_refused`: "
                       "webhooks off, a host outside GATEQUEUE_WEBHOOK_ALLOW, or an address "
                       "that is loopback, link-local or private).",
                  "Error"),
        ),
    ),
    Route(
        "GET", "/jobs", list_jobs, "listJobs", "List jobs, newest first", query=ListQuery,
        replies=(Reply(200, "A page of jobs and the cursor of the next page.", JobList),
                 ERR_422_QUERY),
    ),
    Route(
        "GET", "/jobs/{id}", get_job, "getJob", "One job", params=(JOB_ID,),
        replies=(_job(200, "The job."), ERR_404_JOB),
    ),
    Route(
        "POST", "/jobs/{id}/cancel", cancel_job, "cancelJob", "Cancel a job", params=(JOB_ID,),
        role=Role.SUBMIT,
        description="The submit role cancels its own jobs; cancelling another's needs admin.",
        replies=(
            _job(200, "It was Pending and is now Cancelled."),
            _job(202, "It is Running: `cancelRequested` is set and its worker stops it."),
            ERR_404_JOB,
            Reply(409, "The job has already finished (code `job_finished`).", "Error"),
        ),
    ),
    Route(
        "DELETE", "/jobs/{id}", delete_job, "deleteJob",
        "Delete a job and everything stored for it", params=(JOB_ID,), role=Role.SUBMIT,
        description=(
            "Removes the job, its logs, metrics, checkpoints and files. A Pending or Running "
            "job is cancelled first. The submit role deletes its own jobs; another's needs "
            "admin."
        ),
        replies=(Reply(200, "Deleted; what was removed.", Deleted), ERR_404_JOB),
    ),
    Route(
        "GET", "/jobs/{id}/logs", job_logs, "getJobLogs", "Stored log lines", params=(JOB_ID,),
        query=LogsQuery,
        replies=(Reply(200, "Batches of lines from `from`, in order.", Logs), ERR_404_JOB,
                 ERR_422_QUERY),
    ),
    Route(
        "GET", "/jobs/{id}/metrics", job_metrics, "getJobMetrics", "Per-epoch metrics",
        params=(JOB_ID,),
        replies=(Reply(200, "One entry per finished epoch.", Metrics), ERR_404_JOB),
    ),
    *_downloads(
        "/jobs/{id}/artifacts/{name:.+}", job_artifact, "JobArtifact",
        "a file of a finished run (the trained network)",
        (JOB_ID, Param("name", "path", "An entry's `name` from the job's `artifacts`.",
                       required=True)),
        "The file's bytes.",
        Reply(404, "No such job, or the job has no artifact of this name.", "Error"),
    ),
    *_downloads(
        "/jobs/{id}/checkpoint", job_checkpoint, "JobCheckpoint",
        "the job's latest checkpoint", (JOB_ID,),
        "The checkpoint file (trainer/checkpoint.py's format).",
        Reply(404, "No such job, or it has no checkpoint (`checkpoint_not_found`).", "Error"),
    ),
    Route(
        "GET", "/options", options, "getOptions",
        "The options a job request may carry, with types, bounds and help; the status names",
        role=None,
        replies=(Reply(200, "Training and run options, as the web form shows them."),),
    ),
)  # fmt: skip


# -- retention ---------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    policy = Policy(logs_days=settings.retain_logs_days, failed_days=settings.retain_failed_days)
    metrics = app[METRICS]
    app[RETENTION] = Retention(
        app[STORE],
        policy,
        on_removed=lambda what, removed: metrics.note_removed(what, removed.to_json()),
    )
    app.cleanup_ctx.append(_retention_ctx)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Passes on a schedule while the app serves (service.jobs.retention)."""
    task = asyncio.create_task(app[RETENTION].forever(), name="retention")
    yield
    await cancel_and_wait(task)
