"""The sweep record as stored in `sweeps`, and the views the API derives from it and its jobs.

What is stored is what was asked (the spec), what it expanded to (`total`, `varying`) and
the live reservations of `maxParallel` (`running`, docs/sweeps.md "maxParallel"). What a
sweep *is doing* (its status, counts, best run) is never stored: it is read from its jobs
every time, so it cannot disagree with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from bson import ObjectId
from pydantic import AliasChoices, Field

from service.jobs.record import Circuit, Id, Record, Time, utcnow
from service.jobs.status import Status
from service.sweeps.spec import SweepPlan


class SweepState(StrEnum):
    CREATING = "creating"  # its jobs are being inserted, held back from workers
    READY = "ready"


class SweepStatus(StrEnum):
    ACTIVE = "Active"
    FINISHED = "Finished"
    CANCELLED = "Cancelled"


class Reservation(Record):
    """One of `maxParallel` slots, taken by a claim before it is made (its attempt id)."""

    attemptId: str
    jobId: Id
    at: Time


class SweepRecord(Record):
    id: Id = Field(validation_alias=AliasChoices("_id", "id"))
    name: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = Field(default_factory=list)
    maxParallel: int | None = None
    priority: int = 0
    metric: str
    total: int = Field(ge=0, description="Jobs in the sweep.")
    varying: list[str] = Field(description="The options whose value differs between runs.")
    submittedBy: str | None = None
    createdAt: Time
    state: SweepState = SweepState.READY
    creatingUntil: Time | None = None
    cancelRequested: bool = False
    cancelledAt: Time | None = None
    running: list[Reservation] = Field(default_factory=list)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SweepRecord:
        return cls.model_validate(doc)

    def to_doc(self) -> dict[str, Any]:
        doc = self.model_dump()
        doc["_id"] = doc.pop("id")
        return doc


def new_sweep(
    sweep_plan: SweepPlan, *, submitted_by: str | None, creating_for_s: float
) -> SweepRecord:
    spec = sweep_plan.spec
    now = utcnow()
    return SweepRecord(
        id=ObjectId(),
        name=spec.name,
        base=spec.base,
        grid=spec.grid,
        random=spec.random.model_dump() if spec.random else None,
        runs=spec.runs,
        maxParallel=spec.maxParallel,
        priority=sweep_plan.priority,
        metric=spec.metric,
        total=len(sweep_plan.runs),
        varying=sweep_plan.varying,
        submittedBy=submitted_by,
        createdAt=now,
        state=SweepState.CREATING,
        creatingUntil=now + timedelta(seconds=creating_for_s),
    )


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


# -- what the API shows ------------------------------------------------------------------


class Best(Record):
    id: Id = Field(description="The best job's id.")
    value: float = Field(description="Its metric.")
    options: dict[str, Any] = Field(description="Its values of the varying options.")


class SweepRun(Record):
    id: Id
    index: int = Field(ge=0, description="Its combination's index in the sweep.")
    name: str | None = None
    status: Status
    options: dict[str, Any] = Field(description="Its values of the varying options.")
    value: float | None = Field(description="Its latest value of the sweep's metric.")
    latestMetrics: dict[str, Any] | None = None
    startedAt: Time | None = None
    finishedAt: Time | None = None
    circuit: Circuit | None = Field(
        None, description="A Succeeded run's circuit (live gates, speed: sortable columns)."
    )


class Sweep(Record):
    """A sweep as the API shows it."""

    id: Id
    name: str | None
    status: SweepStatus
    submittedBy: str | None
    createdAt: Time
    finishedAt: Time | None = Field(description="When its last job finished.")
    maxParallel: int | None
    priority: int
    metric: str
    goal: Literal["max", "min"] = Field(description="`min` for a metric named `*loss`.")
    total: int
    varying: list[str]
    counts: dict[str, int] = Field(description="Jobs per status.")
    remaining: int = Field(description="Jobs still to finish (Pending or Running).")
    running: int = Field(description="Jobs Running now.")
    best: Best | None = Field(description="The job with the best metric so far.")
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    random: dict[str, Any] | None
    runs: list[dict[str, Any]]


class SweepDetail(Sweep):
    jobs: list[SweepRun] = Field(description="Every run, in combination order.")


class SweepList(Record):
    sweeps: list[Sweep] = Field(description="Newest first.")
    next: str | None = Field(description="Pass as `after` for the next page.")


class SweepCancelled(Record):
    sweep: Sweep
    cancelled: int = Field(description="Pending jobs now Cancelled.")
    stopping: int = Field(description="Running jobs asked to stop.")


def run_options(doc: dict[str, Any], varying: list[str]) -> dict[str, Any]:
    """A stored job's values of `varying` (training options live under `hyperparameters`)."""
    hp = doc.get("hyperparameters") or {}
    return {k: hp[k] if k in hp else doc.get(k) for k in varying}


def metric_value(doc: dict[str, Any], metric: str) -> float | None:
    value = (doc.get("latestMetrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


@dataclass
class SweepStats:
    """What a sweep's jobs say about it: from all its rows (one sweep) or from an
    aggregation (a page of sweeps)."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    best: dict[str, Any] | None = None  # the best job's document (with latestMetrics)
    last_finish: datetime | None = None

    def add(self, doc: dict[str, Any], metric: str) -> None:
        self.counts[doc["status"]] = self.counts.get(doc["status"], 0) + 1
        value = metric_value(doc, metric)
        if value is not None:
            best = None if self.best is None else metric_value(self.best, metric)
            if best is None or (value < best if lower_is_better(metric) else value > best):
                self.best = doc
        finished = doc.get("finishedAt")
        if finished is not None and (self.last_finish is None or finished > self.last_finish):
            self.last_finish = finished


def summarize(
    sweep: SweepRecord, stats: SweepStats, rows: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The API's JSON of a sweep; with `rows` (its jobs' documents as
    `JobStore.sweep_rows` projects them) the detail view, with every run."""
    counts = stats.counts
    remaining = counts[Status.PENDING.value] + counts[Status.RUNNING.value]
    if sweep.cancelRequested:
        status = SweepStatus.CANCELLED
    elif remaining == 0 and sweep.state is SweepState.READY:
        status = SweepStatus.FINISHED
    else:
        status = SweepStatus.ACTIVE
    best = stats.best
    best_value = None if best is None else metric_value(best, sweep.metric)
    view: dict[str, Any] = {
        "id": sweep.id,
        "name": sweep.name,
        "status": status,
        "submittedBy": sweep.submittedBy,
        "createdAt": sweep.createdAt,
        "finishedAt": stats.last_finish if remaining == 0 else None,
        "maxParallel": sweep.maxParallel,
        "priority": sweep.priority,
        "metric": sweep.metric,
        "goal": "min" if lower_is_better(sweep.metric) else "max",
        "total": sweep.total,
        "varying": sweep.varying,
        "counts": counts,
        "remaining": remaining,
        "running": counts[Status.RUNNING.value],
        "best": None
        if best is None or best_value is None
        else {"id": best["_id"], "value": best_value, "options": run_options(best, sweep.varying)},
        "base": sweep.base,
        "grid": sweep.grid,
        "random": sweep.random,
        "runs": sweep.runs,
    }
    if rows is None:
        return Sweep.model_validate(view).model_dump(mode="json")
    view["jobs"] = sorted(
        (
            {
                "id": doc["_id"],
                "index": doc.get("sweepIndex", 0),
                "name": doc.get("name"),
                "status": doc["status"],
                "options": run_options(doc, sweep.varying),
                "value": metric_value(doc, sweep.metric),
                "latestMetrics": doc.get("latestMetrics"),
                "startedAt": doc.get("startedAt"),
                "finishedAt": doc.get("finishedAt"),
                "circuit": doc.get("circuit"),
            }
            for doc in rows
        ),
        key=lambda r: r["index"],
    )
    return SweepDetail.model_validate(view).model_dump(mode="json")


def stats_of(rows: list[dict[str, Any]], metric: str) -> SweepStats:
    stats = SweepStats()
    for doc in rows:
        stats.add(doc, metric)
    return stats
