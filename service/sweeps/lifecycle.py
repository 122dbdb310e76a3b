"""Creating a sweep all or nothing, cancelling it, deleting it, and tidying up creations
that died.

Creation writes the sweep record (`state: creating`), then its jobs in bounded batches with
`held: true`, so no worker claims any of them yet; then marks the sweep `ready` and lets the
jobs go. If anything fails before `ready`, the jobs and the record are deleted again, so a
refused or failed request leaves nothing behind. If the API process itself dies half-way,
`tidy` (run by every API process every minute) finishes the job: a sweep still `creating`
after its deadline is deleted with its jobs, and a `ready` sweep with jobs still held has
them let go (docs/sweeps.md, "All or nothing").
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from bson import ObjectId

from service.config import DEFAULT_IDEMPOTENCY_TTL_S
from service.jobs.record import new_job
from service.store import Store
from service.store.removal import Removed
from service.sweeps import controller
from service.sweeps.record import SweepRecord, SweepState, new_sweep
from service.sweeps.search import first_target
from service.sweeps.spec import SweepPlan

log = structlog.get_logger(__name__)

# How long a creation may take before `tidy` takes it for dead. A 1,000-job sweep is
# stored in well under a second; this is for a database that stalls, not for the work.
CREATING_FOR_S = 600.0
# Jobs removed per step when a sweep is deleted.
DELETE_SLICE = 200


def sweep_docs(sweep_plan: SweepPlan, sweep: SweepRecord) -> list[dict[str, Any]]:
    """The job documents of a sweep, as `new_job` would make each one.

    The first goes through the job model; the others copy its document with their own
    options (already validated, by the request model, in `plan`): a thousand models built
    and dumped one by one cost more than storing them.
    """
    docs: list[dict[str, Any]] = []
    template: dict[str, Any] | None = None
    for run in sweep_plan.runs:
        hyperparameters, run_options = run.split()
        run_options["name"] = sweep_plan.job_name(run)
        run_options["priority"] = sweep.priority
        own = {
            "hyperparameters": hyperparameters,
            **run_options,
            "sweepId": sweep.id,
            "sweepIndex": run.index,
            "sweepMaxParallel": sweep.maxParallel,
            "targetEpoch": first_target(sweep.scheduler, hyperparameters["epochs"]),
        }
        own["memoryEstimate"] = None if run.estimate is None else run.estimate.model_dump()
        ref = sweep_plan.datasets.get(hyperparameters.get("dataset", ""))
        own["datasetRef"] = None if ref is None else ref.model_dump()
        if template is None:
            job = new_job(hyperparameters, run_options, submitted_by=sweep.submittedBy)
            template = {**job.to_doc(), **own}
            docs.append(template)
            continue
        docs.append({**template, "_id": ObjectId(), **own})
    return docs


@dataclass(frozen=True)
class Created:
    sweep: SweepRecord
    created: bool  # False: an Idempotency-Key replay, `sweep` is the first request's
    jobs: list[dict[str, Any]] | None = None  # the documents stored, when created


async def create_sweep(
    store: Store,
    sweep_plan: SweepPlan,
    *,
    submitted_by: str | None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    key_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S,
) -> Created:
    """Store the sweep and its jobs; a replay of an Idempotency-Key returns the first
    request's sweep.

    Runs to the end even if the caller is cancelled (a client that hangs up): a half-made
    sweep is either finished or removed, never left.
    """
    sweep = new_sweep(sweep_plan, submitted_by=submitted_by, creating_for_s=CREATING_FOR_S)
    sweep, created = await store.sweeps.insert(
        sweep, idempotency_key=idempotency_key, body_hash=body_hash, key_ttl_s=key_ttl_s
    )
    if not created:
        return Created(sweep, False)
    task = asyncio.ensure_future(_fill(store, sweep_plan, sweep))
    return await asyncio.shield(task)


async def _fill(store: Store, sweep_plan: SweepPlan, sweep: SweepRecord) -> Created:
    docs = sweep_docs(sweep_plan, sweep)
    try:
        await store.jobs.insert_held(docs)
        await store.sweeps.mark_ready(sweep.id)
    except BaseException:
        await _remove(store, sweep.id)
        raise
    await _release(store, sweep.id)
    ready = sweep.model_copy(update={"state": SweepState.READY, "creatingUntil": None})
    if ready.adaptive:  # its first trials; the rest as runs finish
        await controller.settle(store, sweep.id)
        with contextlib.suppress(Exception):  # shown as made; its page shows the trials
            ready = await store.sweeps.get(sweep.id) or ready
        return Created(ready, True, None)
    return Created(ready, True, docs)


async def _remove(store: Store, sweep_id: ObjectId) -> None:
    try:
        await store.jobs.delete_sweep_jobs(sweep_id)
        await store.sweeps.delete(sweep_id)
    except Exception as exc:  # tidy() removes it once its deadline passes
        log.warning("could not remove a failed sweep", sweep_id=str(sweep_id), error=str(exc))


async def _release(store: Store, sweep_id: ObjectId) -> None:
    try:
        await store.jobs.release_held(sweep_id)
    except Exception as exc:  # the sweep is stored; tidy() lets the jobs go
        log.warning("could not release a sweep's jobs yet", sweep_id=str(sweep_id),
                    error=str(exc))  # fmt: skip


async def tidy(store: Store) -> tuple[int, int]:
    """Finish what dead creations left: (sweeps removed, sweeps whose jobs were let go), and
    make the trials of random and TPE searches a dead controller left unmade."""
    removed = released = 0
    for sweep_id in await store.sweeps.abandoned():
        log.warning("removing a sweep whose creation did not finish", sweep_id=str(sweep_id))
        await store.jobs.delete_sweep_jobs(sweep_id)
        await store.sweeps.delete(sweep_id)
        removed += 1
    for sweep_id in await store.jobs.held_sweeps():
        sweep = await store.sweeps.get(sweep_id)
        if sweep is not None and sweep.state is SweepState.READY:
            await store.jobs.release_held(sweep_id)
            released += 1
    await controller.fill_all(store)
    return removed, released


async def cancel_sweep(store: Store, sweep_id: ObjectId) -> tuple[SweepRecord, int, int] | None:
    """Flag the sweep (no slot is taken for it any more), cancel its Pending jobs at once and
    ask the workers of its Running ones to stop them: (sweep, cancelled, stopping)."""
    sweep = await store.sweeps.request_cancel(sweep_id)
    if sweep is None:
        return None
    cancelled, stopping = await store.jobs.cancel_sweep(sweep_id)
    return sweep, cancelled, stopping


async def delete_sweep(store: Store, sweep_id: ObjectId) -> Removed:
    """Cancel the sweep (its Running jobs' workers stop them), then remove every run with all
    it stored, a slice at a time, and the sweep last: a removal cut short leaves the sweep,
    and deleting it again finishes it."""
    await cancel_sweep(store, sweep_id)
    removed = Removed()
    ids = await store.jobs.ids_of_sweep(sweep_id)
    for start in range(0, len(ids), DELETE_SLICE):
        removed += await store.removal.jobs(ids[start : start + DELETE_SLICE])
    await store.deliveries.delete_for("sweep", [sweep_id])
    await store.sweeps.delete(sweep_id)
    return removed
