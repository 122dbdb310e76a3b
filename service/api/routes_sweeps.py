"""The `/sweeps` routes: submit a sweep (all its jobs at once), list, inspect, cancel.

A sweep is validated whole before anything is stored (service.sweeps.spec) and stored all
or nothing (service.sweeps.lifecycle); its status, counts and best run are read from its
jobs on every request (service.sweeps.views). docs/sweeps.md is the user's guide.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web
from bson import ObjectId
from pydantic import Field

from service.api.auth import principal_of, require_owner
from service.api.body import parse_body
from service.api.connections import read_body
from service.api.datasets import dataset_problems, sweep_datasets
from service.api.errors import MAX_BODY_BYTES, ApiError, json_response
from service.api.keys import QUOTA, SETTINGS, SLOTS, STORE
from service.api.limits import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from service.api.routes_jobs import ERR_408_BODY, ERR_422_QUERY, IDEMPOTENCY_PARAM, idempotency_key
from service.api.routing import ID_PATTERN, Param, Query, Reply, Route, not_found, path_id
from service.api.schemas import Deleted
from service.api.webhooks import check_notifies, sweep_notifies
from service.cancellation import cancel_and_wait
from service.jobs import memory
from service.jobs.record import MemoryEstimate
from service.retry import DATABASE, Backoff, retry
from service.store.errors import SweepInProgress, SweepKeyReused
from service.store.jobs import request_hash
from service.sweeps.lifecycle import cancel_sweep, create_sweep, delete_sweep, tidy
from service.sweeps.record import (
    SweepCancelled,
    SweepDetail,
    SweepList,
    SweepRecord,
    SweepState,
    stats_of,
)
from service.sweeps.spec import (
    SweepEmpty,
    SweepInvalid,
    SweepRequest,
    SweepTooLarge,
    SweepValuesInvalid,
    check_size,
    plan_in_slices,
)
from service.sweeps.views import shown, sweep_detail, sweep_summaries, sweep_summary
from service.tokens import Role

log = structlog.get_logger(__name__)

TIDY_EVERY_S = 60.0
# A failed tidy (the database away) is tried again every ~2 s, the slowest database retry.
TIDY_RETRY = Backoff(initial_s=DATABASE.max_s, max_s=DATABASE.max_s)
_EXAMPLE = {
    "name": "gates x parametrization",
    "base": {"gateOptimizer": "softmax", "gates": 1000, "networkLayers": 4, "grouping": 10,
             "groupSumTau": 30, "residualLayers": 0, "epochs": 5},
    "grid": {"gates": [1000, 4000], "gateOptimizer": ["softmax", "entmax"]},
    "maxParallel": 2,
    "metric": "val_acc_discrete",
    "seeds": 3,
}  # fmt: skip


class SweepListQuery(Query):
    submittedBy: str | None = Field(None, max_length=64, description="Only this token's sweeps.")
    limit: int = Field(DEFAULT_LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT)
    after: str | None = Field(
        None, pattern=ID_PATTERN, description="The `next` of the previous page."
    )


def _invalid(exc: SweepInvalid) -> ApiError:
    first = exc.bad[0]
    return ApiError(
        422,
        "invalid_combination",
        str(exc),
        fields=first.fields,
        extra={"combination": first.to_json(), "combinations": [b.to_json() for b in exc.bad]},
    )


async def submit_sweep(request: web.Request) -> web.Response:
    """The cheap checks first (the rate, the body's size and depth, the sweep's size), then
    every value and combination, in slices of the event loop's time (service.sweeps.spec)."""
    principal = principal_of(request)
    key = idempotency_key(request)
    request.app[QUOTA].charge(principal.name)  # a refused sweep counts too
    spec = parse_body(SweepRequest, await read_body(request))
    await check_notifies(request, sweep_notifies(spec))
    max_jobs = request.app[SETTINGS].max_sweep
    try:
        check_size(spec, max_jobs=max_jobs)
        slots = await request.app[SLOTS].slots()
        registered = await sweep_datasets(request.app[STORE], spec)

        def admit(hp: dict[str, Any]) -> MemoryEstimate:
            record = registered.get(hp["dataset"])
            if record is None:
                return memory.admit(hp, slots)
            problems = dataset_problems(record, hp)
            if problems:
                raise memory.TooBig(problems[0]["message"], problems)
            return memory.admit(hp, slots, record.shape.data_shape())

        sweep_plan = await plan_in_slices(spec, max_jobs=max_jobs, admit=admit)
        sweep_plan = replace(
            sweep_plan, datasets={value: r.ref() for value, r in registered.items()}
        )
    except SweepValuesInvalid as exc:
        raise ApiError(422, "validation_error", str(exc), fields=exc.fields) from None
    except SweepInvalid as exc:
        raise _invalid(exc) from None
    except (SweepTooLarge, SweepEmpty) as exc:
        code = "sweep_too_large" if isinstance(exc, SweepTooLarge) else "sweep_empty"
        raise ApiError(422, code, str(exc)) from None
    store = request.app[STORE]
    # Python's dump: a `notify` URL whole (its JSON form shows the host alone).
    body_hash = None if key is None else request_hash(spec.model_dump())
    try:
        # A replay is not new work: no quota for it.
        ttl_s = request.app[SETTINGS].idempotency_ttl_s
        if key is None or not await store.sweeps.key_used(principal.name, key, ttl_s):
            await request.app[QUOTA].admit(principal.name, jobs=len(sweep_plan.runs))
        made = await create_sweep(
            store, sweep_plan, submitted_by=principal.name, idempotency_key=key,
            body_hash=body_hash, key_ttl_s=ttl_s,
        )  # fmt: skip
    except SweepKeyReused as exc:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for sweep {exc.sweep.id} with a different body",
        ) from None
    except SweepInProgress as exc:
        raise ApiError(
            409,
            "sweep_in_progress",
            f"sweep {exc.sweep.id} of this Idempotency-Key is still being stored; retry",
            headers={"Retry-After": "1"},
        ) from None
    sweep = made.sweep
    if made.jobs is not None:  # what was just stored: no need to read it back
        body = shown(sweep, stats_of(made.jobs), detail=True)
    else:
        body = await sweep_detail(store, sweep)
    return json_response(
        body, status=201 if made.created else 200, headers={"Location": f"/sweeps/{sweep.id}"}
    )


def _sweep_id(request: web.Request) -> ObjectId:
    return path_id(request, "sweep")


async def _existing(request: web.Request) -> SweepRecord:
    oid = _sweep_id(request)
    sweep = await request.app[STORE].sweeps.get(oid)
    if sweep is None or sweep.state is not SweepState.READY:
        raise not_found("sweep", oid)
    return sweep


async def list_sweeps(request: web.Request, query: SweepListQuery) -> web.Response:
    store = request.app[STORE]
    after = None if query.after is None else ObjectId(query.after)
    sweeps = await store.sweeps.list(
        limit=query.limit + 1, after=after, submitted_by=query.submittedBy
    )
    page = sweeps[: query.limit]
    more = len(sweeps) > query.limit
    return json_response(
        {
            "sweeps": await sweep_summaries(store, page),
            "next": str(page[-1].id) if more and page else None,
        }
    )


async def get_sweep(request: web.Request) -> web.Response:
    sweep = await _existing(request)
    return json_response(await sweep_detail(request.app[STORE], sweep))


async def cancel(request: web.Request) -> web.Response:
    """The submit role cancels its own sweeps; another's needs admin."""
    sweep = await _existing(request)
    require_owner(principal_of(request), sweep.submittedBy, f"sweep {sweep.id}")
    store = request.app[STORE]
    result = await cancel_sweep(store, sweep.id)
    if result is None:
        raise not_found("sweep", sweep.id)
    flagged, cancelled, stopping = result
    # The sweep in brief (counts, best): its runs are not part of this answer, so not read.
    summary = await sweep_summary(store, flagged)
    return json_response({"sweep": summary, "cancelled": cancelled, "stopping": stopping})


async def delete(request: web.Request) -> web.Response:
    """The owner or an admin: the sweep is cancelled, then it and every run are removed."""
    sweep = await _existing(request)
    principal = principal_of(request)
    require_owner(principal, sweep.submittedBy, f"sweep {sweep.id}", "deleting")
    removed = await delete_sweep(request.app[STORE], sweep.id)
    log.info("sweep deleted", sweep_id=str(sweep.id), by=principal.name, **removed.to_json())
    return json_response({"id": str(sweep.id), "removed": removed.to_json()})


# -- tidying creations that died ---------------------------------------------------------


def _tidy_failed(exc: BaseException, delay: float) -> None:
    log.warning("tidying sweeps failed; trying again later", error=str(exc), in_s=round(delay, 2))


async def _tidy_forever(app: web.Application) -> None:
    store = app[STORE]
    while True:
        removed, released = await retry(
            lambda: tidy(store),
            policy=TIDY_RETRY,
            retry_on=(Exception,),
            on_error=_tidy_failed,
            operation="sweeps_tidy",
        )
        if removed or released:
            log.info("sweeps tidied", removed=removed, released=released)
        await asyncio.sleep(TIDY_EVERY_S)


async def _tidy_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_tidy_forever(app), name="tidy-sweeps")
    yield
    with contextlib.suppress(Exception):
        await cancel_and_wait(task)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_tidy_ctx)


# -- declarations ------------------------------------------------------------------------

SWEEP_ID = Param("id", "path", "Sweep id (24 hex digits).", required=True)
ERR_404_SWEEP = Reply(404, "No sweep with this id.", "Error")

ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/sweeps", submit_sweep, "submitSweep", "Submit a sweep: many jobs in one request",
        role=Role.SUBMIT,
        description=(
            "`grid` (every combination of its values) crossed with `runs` (explicit "
            "overrides), plus `random.n` samples from `random.space`; each on top of `base`, "
            "run `seeds` times (seed 0..seeds-1). "
            "Every combination is validated before anything is stored: a bad one is a 422 "
            "naming its index, values and field (`error.combination`), and no job is made. "
            "With an `Idempotency-Key` header, retries return the same sweep."
        ),
        body=SweepRequest, body_examples={"grid": {"summary": "A 2 x 2 grid", "value": _EXAMPLE}},
        params=(IDEMPOTENCY_PARAM,),
        replies=(
            Reply(201, "Created, every job Pending; `Location` points at the sweep.", SweepDetail,
                  headers=("Location",)),
            Reply(200, "Replay of an earlier request with the same Idempotency-Key.",
                  SweepDetail, headers=("Location",)),
            Reply(400, "Malformed JSON, a body that is not an object, or a bad header.", "Error"),
            ERR_408_BODY,
            Reply(409, "The Idempotency-Key was used with another body "
                       "(`idempotency_key_reused`), or its sweep is still being stored "
                       "(`sweep_in_progress`, with Retry-After).", "Error"),
            Reply(413, f"Body larger than {MAX_BODY_BYTES} bytes.", "Error"),
            Reply(415, "Content-Type is not application/json.", "Error"),
            Reply(422, "Invalid body (`fields`), a combination that is no valid job "
                       "(`invalid_combination`), more jobs than GATEQUEUE_MAX_SWEEP "
                       "(`sweep_too_large`) or none (`sweep_empty`), or a `notify` URL the "
                       "server will not call (`webhook_refused`).", "Error"),
            Reply(429, "Too many Pending jobs for this token (`too_many_pending`) or too many "
                       "submissions a minute (`rate_limited`); see Retry-After.", "Error",
                  headers=("Retry-After",)),
        ),
    ),
    Route(
        "GET", "/sweeps", list_sweeps, "listSweeps", "List sweeps, newest first",
        query=SweepListQuery,
        replies=(Reply(200, "A page of sweeps (without their runs).", SweepList), ERR_422_QUERY),
    ),
    Route(
        "GET", "/sweeps/{id}", get_sweep, "getSweep", "One sweep with every run",
        params=(SWEEP_ID,),
        replies=(Reply(200, "The sweep, its counts, its best run and every run.", SweepDetail),
                 ERR_404_SWEEP),
    ),
    Route(
        "POST", "/sweeps/{id}/cancel", cancel, "cancelSweep", "Cancel every job of a sweep",
        params=(SWEEP_ID,), role=Role.SUBMIT,
        description="Pending jobs are Cancelled at once; Running ones are stopped by their "
        "workers. The submit role cancels its own sweeps; another's needs admin.",
        replies=(Reply(200, "Cancelled.", SweepCancelled), ERR_404_SWEEP),
    ),
    Route(
        "DELETE", "/sweeps/{id}", delete, "deleteSweep",
        "Delete a sweep and every run with all it stored", params=(SWEEP_ID,), role=Role.SUBMIT,
        description="The sweep is cancelled first (Running jobs are stopped by their workers); "
        "then every run's job, logs, metrics, checkpoints and files, and the sweep, are "
        "removed. The submit role deletes its own sweeps; another's needs admin.",
        replies=(Reply(200, "Deleted; what was removed.", Deleted), ERR_404_SWEEP),
    ),
)  # fmt: skip
