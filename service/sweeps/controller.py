"""The controller of a sweep: the scheduler's decisions and the search's new trials.

There is no controller process. Whoever observes a change that calls for a decision makes it:
the worker whose run reached an ASHA rung or an epoch the median rule looks at, the worker
whose run ended (a free place for a new trial), the API that created the sweep, and every API
process's tidier once a minute (a controller that died is taken over there). What makes them
one controller is the sweep document: every decision is a `$push` of a compare-and-set on its
`controlVersion` (`SweepStore.decide`), so two actors never decide from the same state, and
every decision is stored before anyone acts on it:

- a rung decision is recorded once per (run, epoch) and only then applied to the run (promoted
  to Pending for its next rung, or ended with `stoppedEarly`); an actor that dies in between
  leaves the run Running, its lease expires, it is claimed again, resumes from its rung's
  checkpoint, stops there at once and finds the decision already made: applied, not re-made.
- a new trial is recorded (`asked`: its number and values) before its runs are inserted; runs
  are inserted under a unique `sweepSlot`, so a second actor (or a lost reply's retry) never
  makes a second run, and an actor that died between the two leaves a trial the next pass
  inserts. `asked` never grows past `trials`.

A write whose reply was lost is settled like the claim's: the sweep is read again and the
decision is ours if it is there (docs/sweeps.md, "One controller").
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import structlog
from bson import ObjectId
from pydantic import ValidationError

from service.jobs import memory
from service.jobs.record import JobRecord, new_job
from service.jobs.request import JobRequest, field_errors
from service.jobs.status import Status
from service.retry import retry
from service.store import Store
from service.store.outcome import outcome_unknown
from service.sweeps.record import Asked, Decision, SweepRecord, lower_is_better, metric_value
from service.sweeps.search import (
    DEFAULT_IN_FLIGHT,
    Told,
    asha_promotes,
    ask_tpe,
    first_target,
    median_stops,
    next_target,
    rung_index,
    sample_random,
)
from trainer.data.catalog import DataShape
from trainer.options import TRAINING_NAMES

log = structlog.get_logger(__name__)

ROUNDS = 100  # compare-and-set rounds before giving up (each lost to another decision)
# How long a read or an insert of the controller is retried (an election takes seconds).
WITHIN_S = 30.0


def _within() -> float:
    return time.monotonic() + WITHIN_S


async def _read(store: Store, sweep_id: ObjectId) -> SweepRecord | None:
    return await retry(lambda: store.sweeps.get(sweep_id), deadline=_within())


async def _record(
    store: Store, sweep: SweepRecord, update: dict[str, Any], *, live: bool = False
) -> bool:
    """The compare-and-set; a lost reply counts as not applied (the caller re-reads)."""
    try:
        return await store.sweeps.decide(sweep.id, sweep.controlVersion, update, live=live)
    except Exception as exc:
        if not outcome_unknown(exc):
            raise
        log.warning("a sweep decision's reply was lost; reading it back", sweep=str(sweep.id))
        return False


# -- ASHA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RungOutcome:
    decision: Decision
    target: int | None  # a promoted run's next rung (None: to its `epochs`)
    factor: int


async def at_rung(store: Store, job: JobRecord, epoch: int) -> RungOutcome | None:
    """The decision on `job`, which reached its rung `epoch`: made once, read back after.
    None: the job's sweep has no ASHA scheduler (any more)."""
    if job.sweepId is None:
        return None
    sweep = await _read(store, job.sweepId)
    if sweep is None or (sweep.scheduler or {}).get("type") != "asha":
        return None
    scheduler = sweep.scheduler
    assert scheduler is not None
    values = await store.metrics.values([job.id], sweep.metric, up_to=epoch)
    value = values.get(job.id, {}).get(epoch)
    lower = lower_is_better(sweep.metric)
    epochs = int(job.hyperparameters.get("epochs", epoch))
    factor = int(scheduler["reductionFactor"])
    for _ in range(ROUNDS):
        assert sweep is not None
        made = sweep.decision(job.id, epoch)
        if made is not None:
            return RungOutcome(made, next_target(scheduler, epochs, epoch), factor)
        recorded = [
            d.value for d in sweep.decisions
            if d.epoch == epoch and d.rung is not None and d.value is not None
        ]  # fmt: skip
        decision = Decision(
            jobId=job.id,
            epoch=epoch,
            rung=rung_index(scheduler, epochs, epoch),
            value=value,
            promote=not sweep.cancelRequested
            and asha_promotes(value, recorded, scheduler["reductionFactor"], lower_is_better=lower),
        )
        await _record(store, sweep, {"$push": {"decisions": decision.model_dump()}})
        sweep = await _read(store, job.sweepId)
        if sweep is None:
            return None
    raise RuntimeError(  # every round lost to another decision: contention no sweep sees
        f"no rung decision for job {job.id} after {ROUNDS} rounds"
    )


# -- median -----------------------------------------------------------------------------


async def median_check(store: Store, job: JobRecord, epoch: int) -> Decision | None:
    """Whether the median rule stops `job` after `epoch` (a decision to stop, recorded once);
    None: it goes on."""
    if job.sweepId is None:
        return None
    sweep = await _read(store, job.sweepId)
    if sweep is None or (sweep.scheduler or {}).get("type") != "median":
        return None
    if epoch < sweep.scheduler["graceEpochs"] or epoch >= int(  # type: ignore[index]
        job.hyperparameters.get("epochs", epoch + 1)
    ):
        return None
    made = sweep.decision(job.id, epoch)
    if made is not None:
        return None if made.promote else made
    lower = lower_is_better(sweep.metric)
    ids = await store.jobs.ids_of_sweep(sweep.id)
    values = await store.metrics.values(ids, sweep.metric, up_to=epoch)

    def best(series: dict[int, float]) -> float:
        return min(series.values()) if lower else max(series.values())

    mine = values.pop(job.id, {})
    others = [best(v) for v in values.values() if epoch in v]
    own = best(mine) if mine else None
    if not median_stops(own, others, lower_is_better=lower):
        return None
    decision = Decision(jobId=job.id, epoch=epoch, rung=None, value=own, promote=False)
    for _ in range(ROUNDS):
        assert sweep is not None
        made = sweep.decision(job.id, epoch)
        if made is not None:
            return None if made.promote else made
        if await _record(store, sweep, {"$push": {"decisions": decision.model_dump()}}):
            log.info("median rule stops a run", job_id=str(job.id), epoch=epoch, value=own,
                     median=statistics.median(others))  # fmt: skip
        sweep = await _read(store, job.sweepId)
        if sweep is None:
            return None
    raise RuntimeError(  # every round lost to another decision: contention no sweep sees
        f"no median decision for job {job.id} after {ROUNDS} rounds"
    )


# -- search: new trials -----------------------------------------------------------------


def _told(sweep: SweepRecord, rows: list[dict[str, Any]]) -> list[Told]:
    """Every trial whose runs all finished, as TPE is told it: the mean of its runs' values;
    complete if one of them trained to the end, else pruned at its furthest epoch."""
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for doc in rows:
        by_trial.setdefault(int(doc.get("sweepIndex", 0)) // sweep.seeds, []).append(doc)
    out = []
    for asked in sweep.asked:
        docs = by_trial.get(asked.trial, [])
        if len(docs) < sweep.seeds or not all(Status(d["status"]).finished for d in docs):
            continue
        ok = [d for d in docs if d["status"] == Status.SUCCEEDED.value]
        values = [v for d in ok if (v := metric_value(d, sweep.metric)) is not None]
        complete = any(not d.get("stoppedEarly") for d in ok)
        epoch = max(((d.get("latestMetrics") or {}).get("epoch") or 0 for d in docs), default=0)
        value = statistics.fmean(values) if values else None
        out.append(Told(asked.params, value, complete, int(epoch)))
    return out


def _ask(sweep: SweepRecord, rows: list[dict[str, Any]], trial: int) -> dict[str, Any]:
    search = sweep.search or {}
    if search.get("type") == "tpe":
        return ask_tpe(
            sweep.space, _told(sweep, rows), seed=int(search.get("seed", 0)), trial=trial,
            trials=int(search["trials"]), lower_is_better=lower_is_better(sweep.metric),
        )  # fmt: skip
    return sample_random(sweep.space, int(search.get("seed", 0)), trial)


def _in_flight(sweep: SweepRecord, rows: list[dict[str, Any]]) -> int:
    """Trials asked whose runs are not all made yet or not all finished (a removed run of a
    made trial counts as finished: it is never made again)."""
    made = set(sweep.made)
    unfinished = {
        int(doc.get("sweepIndex", 0)) // sweep.seeds
        for doc in rows
        if not Status(doc["status"]).finished
    }
    return sum(1 for a in sweep.asked if a.trial not in made or a.trial in unfinished)


def trial_docs(
    sweep: SweepRecord, asked: Asked, shape: DataShape | None = None
) -> list[dict[str, Any]]:
    """The job documents of one trial: one run per seed, each with its `sweepSlot`
    (`shape`: the sweep's registered data set's, for the memory estimate). A drawn trial
    that makes no valid job is stored as a Failed run saying why."""
    docs = []
    for seed in range(sweep.seeds):
        index = asked.trial * sweep.seeds + seed
        overrides = {**asked.params, **({"seed": seed} if sweep.seeds > 1 else {})}
        body = {**sweep.base, **overrides, "priority": sweep.priority}
        label = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in overrides.items())  # fmt: skip
        prefix = sweep.name or sweep.base.get("name") or "sweep"
        body["name"] = f"{prefix} #{index} {label}".strip()[:200]
        own = {
            "sweepId": sweep.id,
            "sweepIndex": index,
            "sweepMaxParallel": sweep.maxParallel,
            "sweepSlot": f"{sweep.id}:{index}",
        }
        try:
            request = JobRequest.model_validate(body)
            hp, run_options = request.split()
            estimate = memory.estimate(hp, shape)
        except ValidationError as exc:
            problems = "; ".join(f"{f['field']}: {f['message']}" for f in field_errors(exc))
            docs.append(_failed_trial(sweep, body, own, f"an invalid combination: {problems}"))
            continue
        except ValueError as exc:  # its registered data set is gone: no shape to size it by
            docs.append(_failed_trial(sweep, body, own, f"a run that cannot be sized: {exc}"))
            continue
        job = new_job(
            hp, run_options, submitted_by=sweep.submittedBy,
            memory_estimate=estimate, dataset_ref=sweep.datasetRef,
        )  # fmt: skip
        job = job.model_copy(update={"targetEpoch": first_target(sweep.scheduler, hp["epochs"])})
        docs.append({**job.to_doc(), **own})
    return docs


def _failed_trial(
    sweep: SweepRecord, body: dict[str, Any], own: dict[str, Any], why: str
) -> dict[str, Any]:
    hp = {k: v for k, v in body.items() if k in TRAINING_NAMES}
    job = new_job(hp, {"name": body["name"], "priority": sweep.priority},
                  submitted_by=sweep.submittedBy)  # fmt: skip
    return {**job.to_doc(), **own, "status": Status.FAILED.value,
            "error": f"the search drew {why}", "finishedAt": job.createdAt}  # fmt: skip


async def _shape(store: Store, sweep: SweepRecord) -> DataShape | None:
    if sweep.datasetRef is None:
        return None
    record = await retry(lambda: store.datasets.get(sweep.datasetRef.id), deadline=_within())  # type: ignore[union-attr]
    return None if record is None else record.shape.data_shape()


async def _make_missing(store: Store, sweep: SweepRecord, rows: list[dict[str, Any]]) -> int:
    """Insert the runs of asked trials not made yet (this pass's, or a dead controller's),
    then note them made; the runs inserted."""
    have = {int(d.get("sweepIndex", -1)) for d in rows}
    done = set(sweep.made)
    shape = await _shape(store, sweep)
    inserted, trials = 0, []
    for asked in sweep.asked:
        if asked.trial in done:
            continue
        for doc in trial_docs(sweep, asked, shape):
            if doc["sweepIndex"] in have:
                continue
            if await retry(lambda d=doc: store.jobs.insert_trial(d), deadline=_within()):  # type: ignore[misc]
                inserted += 1
        trials.append(asked.trial)
    if trials:
        every = len(set(sweep.made) | set(trials)) >= sweep.total // sweep.seeds
        await retry(lambda: store.sweeps.mark_made(sweep.id, trials, all_made=every),
                    deadline=_within())  # fmt: skip
    return inserted


async def fill(store: Store, sweep_id: ObjectId) -> int:
    """Ask for new trials while the sweep has room (`maxParallel`, else DEFAULT_IN_FLIGHT,
    runs unfinished) and trials left, and make every asked trial's runs; the runs made."""
    made = 0
    for _ in range(ROUNDS):
        sweep = await _read(store, sweep_id)
        if sweep is None or not sweep.adaptive or sweep.state.value != "ready":
            return made
        rows = await retry(lambda: store.jobs.sweep_rows(sweep_id), deadline=_within())
        if any(a.trial not in sweep.made for a in sweep.asked):
            made += await _make_missing(store, sweep, rows)
            # A cancel or a delete may have passed over the sweep's runs while these were
            # inserted (the API flags the sweep before it does): read it again.
            sweep = await _read(store, sweep_id)
            if sweep is None:
                await store.jobs.delete_sweep_jobs(sweep_id)
                return made
            if not sweep.cancelRequested:
                continue  # ask with the runs just made counted
        if sweep.cancelRequested:
            if made:  # runs of trials asked before the cancel: cancelled with the rest
                await store.jobs.cancel_sweep(sweep_id)
            return made
        cap = max(1, (sweep.maxParallel or DEFAULT_IN_FLIGHT) // sweep.seeds)
        total = int((sweep.search or {})["trials"])
        want = min(cap - _in_flight(sweep, rows), total - len(sweep.asked))
        if want <= 0:
            return made
        first = len(sweep.asked)
        asks = []
        for trial in range(first, first + want):
            params = await asyncio.to_thread(_ask, sweep, rows, trial)
            asks.append(Asked(trial=trial, params=params))
        entries = [a.model_dump() for a in asks]
        if await _record(store, sweep, {"$push": {"asked": {"$each": entries}}}, live=True):
            log.info("trials asked", sweep=str(sweep_id), trials=[a.trial for a in asks])
    raise RuntimeError(  # every round lost to another decision: contention no sweep sees
        f"no trials asked for sweep {sweep_id} after {ROUNDS} rounds"
    )


async def settle(store: Store, sweep_id: ObjectId | None) -> None:
    """After a run of the sweep ended: its search's next trials (errors only logged: the
    tidier's pass makes what this one could not)."""
    if sweep_id is None:
        return
    try:
        await fill(store, sweep_id)
    except Exception as exc:
        log.warning("could not make the sweep's next trials; the tidier will",
                    sweep=str(sweep_id), error=str(exc))  # fmt: skip


async def fill_all(store: Store) -> int:
    """The tidier's pass: every live random or TPE sweep's missing trials."""
    made = 0
    for sweep_id in await store.sweeps.adaptive_active():
        made += await fill(store, sweep_id)
    return made
