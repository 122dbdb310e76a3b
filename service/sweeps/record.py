"""The sweep record as stored in `sweeps`, and the views the API derives from it and its jobs.

What is stored is what was asked (the spec), what it expanded to (`total`, `varying`) and
the live reservations of `maxParallel` (`running`, docs/sweeps.md "maxParallel"). What a
sweep *is doing* (its status, counts, best run) is never stored: it is read from its jobs
every time, so it cannot disagree with them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from bson import ObjectId
from pydantic import AliasChoices, Field

from service.jobs.eta import sweep_eta_s
from service.jobs.notify import Notify
from service.jobs.record import (
    Circuit,
    DatasetRef,
    Id,
    JobWarning,
    Record,
    Result,
    StoppedEarly,
    Time,
    utcnow,
)
from service.jobs.status import Status
from service.sweeps.search import adaptive, rung_index
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


class Asked(Record):
    """A trial of a random or TPE search: its number and the values drawn for it. Stored in
    the sweep (one compare-and-set) before its runs are made, so a trial is never made twice
    and one whose runs were not made yet is made by the next controller pass."""

    trial: int = Field(ge=0)
    params: dict[str, Any]


class Decision(Record):
    """A scheduler's decision on one run at one epoch (docs/sweeps.md, "One controller")."""

    jobId: Id
    epoch: int = Field(ge=0)
    rung: int | None = None
    value: float | None = None
    promote: bool


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
    seeds: int = Field(1, ge=1, description="Runs per combination (docs/sweeps.md).")
    total: int = Field(ge=0, description="Jobs in the sweep.")
    varying: list[str] = Field(description="The options whose value differs between runs.")
    submittedBy: str | None = None
    createdAt: Time
    state: SweepState = SweepState.READY
    creatingUntil: Time | None = None
    cancelRequested: bool = False
    cancelledAt: Time | None = None
    running: list[Reservation] = Field(default_factory=list)
    notify: Notify | None = None
    scheduler: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    space: dict[str, Any] = Field(default_factory=dict)
    datasetRef: DatasetRef | None = Field(
        None, description="What `base.dataset` resolved to: the runs a search makes store it."
    )
    # The controller's state, changed only by a compare-and-set on `controlVersion`
    # (service.store.sweeps.SweepStore.decide).
    controlVersion: int = 0
    asked: list[Asked] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    # Trials whose runs were inserted (`$addToSet`, monotonic: no compare-and-set needed). A
    # made trial is never made again, so a run removed later (DELETE, retention) stays gone.
    made: list[int] = Field(default_factory=list)
    allMade: bool = False  # every trial made: nothing left for the tidier's pass

    @property
    def adaptive(self) -> bool:
        return adaptive(self.search)

    def unmade_runs(self) -> int:
        """Runs a random or TPE search has still to make (its trials not asked or not made
        yet): a sweep with any is not finished, though none of its runs is unfinished."""
        if not self.adaptive or self.cancelRequested:
            return 0
        return max(0, self.total // self.seeds - len(set(self.made))) * self.seeds

    def decision(self, job_id: ObjectId, epoch: int) -> Decision | None:
        return next((d for d in self.decisions if d.jobId == job_id and d.epoch == epoch), None)

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
        seeds=spec.seeds,
        scheduler=spec.scheduler_json(),
        search=spec.search_json(),
        space=spec.space_json() if spec.adaptive else {},
        datasetRef=sweep_plan.datasets.get(str(spec.base.get("dataset", ""))),
        total=spec.size() if spec.adaptive else len(sweep_plan.runs),
        varying=sweep_plan.varying,
        submittedBy=submitted_by,
        createdAt=now,
        state=SweepState.CREATING,
        creatingUntil=now + timedelta(seconds=creating_for_s),
        notify=spec.notify,
    )


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


TEST_SELECTION = "test_selection"


def metric_warnings(metric: str) -> list[dict[str, str]]:
    """A sweep that ranks by a test metric tunes its choice to the test set: allowed, said."""
    if not metric.startswith("test_"):
        return []
    return [
        {
            "code": TEST_SELECTION,
            "message": f"the sweep selects by {metric}, a test-set metric: the best run's "
            "test accuracy is then biased upwards (select by val_acc_discrete and read the "
            "test accuracy of the run it picks)",
        }
    ]


# -- what the API shows ------------------------------------------------------------------


class Best(Record):
    id: Id = Field(description="The best combination's best job's id.")
    value: float = Field(description="The best combination's mean of the metric.")
    options: dict[str, Any] = Field(
        description="Its values of the varying options (without `seed` when seeds > 1)."
    )
    std: float | None = Field(None, description="Standard deviation over its runs (n > 1).")
    n: int = Field(1, ge=1, description="Its runs with a value of the metric.")
    combination: int = Field(0, ge=0, description="Its index among the combinations.")


class SweepWarning(Record):
    code: str = Field(description="`test_selection`: the metric is a test-set metric.")
    message: str


class Combination(Record):
    """One combination of a sweep over its seeds: the mean, standard deviation and n of the
    metric over its runs that have a value, and of the kept networks' test accuracy."""

    index: int = Field(ge=0, description="Its index among the combinations.")
    options: dict[str, Any] = Field(description="Its values of the varying options but seed.")
    jobs: list[Id] = Field(description="Its runs, in seed order.")
    n: int = Field(ge=0, description="Runs with a value of the metric.")
    mean: float | None = Field(description="Mean of the metric over those runs.")
    std: float | None = Field(description="Sample standard deviation (n - 1), null for n < 2.")
    testAccDiscrete: float | None = Field(
        description="Mean test_acc_discrete of its runs' kept networks (`result`)."
    )
    warnings: int = Field(ge=0, description="Runs with warnings.")


class SweepRun(Record):
    id: Id
    index: int = Field(ge=0, description="Its combination's index in the sweep.")
    name: str | None = None
    status: Status
    options: dict[str, Any] = Field(description="Its values of the varying options.")
    combination: int = Field(0, ge=0, description="Its combination's index (index // seeds).")
    value: float | None = Field(
        description="Its value of the sweep's metric: its kept network's once it has a "
        "`result` with it, else its latest epoch's."
    )
    latestMetrics: dict[str, Any] | None = None
    result: Result | None = None
    warnings: list[JobWarning] = Field(default_factory=list)
    etaS: float | None = None
    startedAt: Time | None = None
    finishedAt: Time | None = None
    circuit: Circuit | None = Field(
        None, description="A Succeeded run's circuit (live gates, speed: sortable columns)."
    )
    epoch: int = Field(0, ge=0, description="Epochs it trained so far.")
    epochs: int | None = Field(None, description="The epochs it was asked to train.")
    rung: int | None = Field(
        None, description="ASHA: the rung it trains towards or stopped at (0: the first)."
    )
    targetEpoch: int | None = Field(None, description="The epoch it stops at for a decision.")
    stoppedEarly: StoppedEarly | None = None


class Progress(Record):
    done: int = Field(ge=0, description="Trials (combinations) whose runs all finished.")
    asked: int = Field(ge=0, description="Trials made so far.")
    total: int = Field(ge=0, description="Trials the sweep will make at most.")


class Compute(Record):
    epochs: int = Field(ge=0, description="Epochs trained by its runs so far.")
    gridEpochs: int | None = Field(
        description="Epochs a full grid of its space would train (null: a continuous space)."
    )
    stoppedEarly: int = Field(ge=0, description="Runs its scheduler stopped.")


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
    seeds: int = Field(description="Runs per combination.")
    warnings: list[SweepWarning] = Field(
        description="About the sweep itself: `test_selection` when its metric is a test one."
    )
    etaS: float | None = Field(
        description="Estimated seconds until its last run ends (null: not known yet)."
    )
    total: int
    varying: list[str]
    counts: dict[str, int] = Field(description="Jobs per status.")
    remaining: int = Field(description="Jobs still to finish (Pending or Running).")
    running: int = Field(description="Jobs Running now.")
    best: Best | None = Field(
        description="The combination with the best mean of the metric so far, and its best run."
    )
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    random: dict[str, Any] | None
    runs: list[dict[str, Any]]
    scheduler: dict[str, Any] | None = Field(None, description="Its scheduler, as asked.")
    search: dict[str, Any] | None = Field(None, description="Its search, as asked.")
    space: dict[str, Any] = Field(
        default_factory=dict, description="A random or TPE search's space (grid lists as choices)."
    )
    progress: Progress = Field(description="Trials done, asked and in all.")
    compute: Compute = Field(description="Epochs trained against a full grid's.")


class SweepDetail(Sweep):
    jobs: list[SweepRun] = Field(description="Every run, in combination order.")
    combinations: list[Combination] = Field(
        description="Every combination with its runs' mean, std and n, in order."
    )


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
    """A run's value of `metric`: its kept network's once its `result` has it (a finished
    run), else its latest epoch's."""
    kept = (doc.get("result") or {}).get(metric)
    if isinstance(kept, int | float) and not isinstance(kept, bool):
        return float(kept)
    value = (doc.get("latestMetrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


@dataclass
class SweepStats:
    """What a sweep's jobs say about it, read from their documents (`JobStore.sweep_rows`)."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    last_finish: datetime | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, doc: dict[str, Any]) -> None:
        self.counts[doc["status"]] = self.counts.get(doc["status"], 0) + 1
        finished = doc.get("finishedAt")
        if finished is not None and (self.last_finish is None or finished > self.last_finish):
            self.last_finish = finished
        self.rows.append(doc)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def combinations(sweep: SweepRecord, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs grouped by combination (runs i*seeds .. i*seeds+seeds-1), with the mean,
    standard deviation and n of the metric, in order."""
    options = [k for k in sweep.varying if not (sweep.seeds > 1 and k == "seed")]
    groups: dict[int, list[dict[str, Any]]] = {}
    for doc in sorted(rows, key=lambda d: d.get("sweepIndex", 0)):
        groups.setdefault(doc.get("sweepIndex", 0) // sweep.seeds, []).append(doc)
    out = []
    for index, docs in groups.items():
        values = [v for d in docs if (v := metric_value(d, sweep.metric)) is not None]
        tests = [v for d in docs if (v := metric_value(d, "test_acc_discrete")) is not None]
        mean, std = _mean_std(values)
        out.append(
            {
                "index": index,
                "options": run_options(docs[0], options),
                "jobs": [d["_id"] for d in docs],
                "n": len(values),
                "mean": mean,
                "std": std,
                "testAccDiscrete": _mean_std(tests)[0],
                "warnings": sum(1 for d in docs if d.get("warnings")),
            }
        )
    return out


def best_of(
    sweep: SweepRecord, groups: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The combination with the best mean (the first of equal ones), with its best run."""
    lowest = lower_is_better(sweep.metric)
    ranked = [g for g in groups if g["mean"] is not None]
    if not ranked:
        return None
    best = min(ranked, key=lambda g: g["mean"]) if lowest else max(ranked, key=lambda g: g["mean"])
    by_id = {d["_id"]: d for d in rows}
    valued = [(metric_value(by_id[j], sweep.metric), j) for j in best["jobs"]]
    runs = [(v, j) for v, j in valued if v is not None]
    top = (min if lowest else max)(runs, key=lambda vj: vj[0])[1]
    return {
        "id": top,
        "value": best["mean"],
        "options": best["options"],
        "std": best["std"],
        "n": best["n"],
        "combination": best["index"],
    }


def sweep_eta(sweep: SweepRecord, stats: SweepStats) -> float | None:
    """Its runs' own estimates, then the runs not started in waves of its parallelism."""
    running = [d for d in stats.rows if d["status"] == Status.RUNNING.value]
    took = [
        (d["finishedAt"] - d["startedAt"]).total_seconds()
        for d in stats.rows
        if d["status"] == Status.SUCCEEDED.value and d.get("startedAt") and d.get("finishedAt")
    ]
    parallel = sweep.maxParallel or max(1, len(running))
    return sweep_eta_s(
        [d.get("etaS") for d in running], stats.counts[Status.PENDING.value], took, parallel
    )


def _epochs_of(doc: dict[str, Any]) -> int:
    epochs = (doc.get("hyperparameters") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else 0


def _trained(doc: dict[str, Any]) -> int:
    epoch = (doc.get("latestMetrics") or {}).get("epoch")
    return int(epoch) if isinstance(epoch, int | float) else 0


def progress(sweep: SweepRecord, groups: list[dict[str, Any]], rows: list[dict[str, Any]]
             ) -> dict[str, int]:  # fmt: skip
    """Trials done / asked / total (a grid's combinations are all asked at once)."""
    finished = {d["_id"] for d in rows if Status(d["status"]).finished}
    done = sum(1 for g in groups if g["jobs"] and all(j in finished for j in g["jobs"]))
    if sweep.adaptive:
        return {"done": done, "asked": len(sweep.asked), "total": sweep.total // sweep.seeds}
    combos = sweep.total // sweep.seeds
    return {"done": done, "asked": combos, "total": combos}


def compute(sweep: SweepRecord, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Epochs trained so far against what a full grid of the space would train."""
    grid: int | None
    if not sweep.adaptive:
        grid = sum(_epochs_of(d) for d in rows)
    elif all("choice" in d for d in sweep.space.values()):
        epochs = sweep.base.get("epochs")
        if not isinstance(epochs, int):
            from trainer.options import TrainingOptions

            epochs = int(TrainingOptions().epochs)  # type: ignore[attr-defined]
        grid = math.prod(len(d["choice"]) for d in sweep.space.values()) * sweep.seeds * epochs
    else:
        grid = None
    return {
        "epochs": sum(_trained(d) for d in rows),
        "gridEpochs": grid,
        "stoppedEarly": sum(1 for d in rows if d.get("stoppedEarly")),
    }


def run_rung(sweep: SweepRecord, doc: dict[str, Any]) -> int | None:
    stopped = doc.get("stoppedEarly")
    if stopped:
        return stopped.get("rung")  # type: ignore[no-any-return]
    target = doc.get("targetEpoch")
    if sweep.scheduler is None or sweep.scheduler.get("type") != "asha" or not target:
        return None
    return rung_index(sweep.scheduler, _epochs_of(doc), target)


def summarize(sweep: SweepRecord, stats: SweepStats, *, detail: bool = False) -> dict[str, Any]:
    """The API's JSON of a sweep from its jobs' documents (as `JobStore.sweep_rows`
    projects them); with `detail` the detail view, with every run and combination."""
    counts = stats.counts
    remaining = counts[Status.PENDING.value] + counts[Status.RUNNING.value] + sweep.unmade_runs()
    if sweep.cancelRequested:
        status = SweepStatus.CANCELLED
    elif remaining == 0 and sweep.state is SweepState.READY:
        status = SweepStatus.FINISHED
    else:
        status = SweepStatus.ACTIVE
    groups = combinations(sweep, stats.rows)
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
        "seeds": sweep.seeds,
        "warnings": metric_warnings(sweep.metric),
        "etaS": None if status is not SweepStatus.ACTIVE else sweep_eta(sweep, stats),
        "total": sweep.total,
        "varying": sweep.varying,
        "counts": counts,
        "remaining": remaining,
        "running": counts[Status.RUNNING.value],
        "best": best_of(sweep, groups, stats.rows),
        "base": sweep.base,
        "grid": sweep.grid,
        "random": sweep.random,
        "runs": sweep.runs,
        "scheduler": sweep.scheduler,
        "search": sweep.search,
        "space": sweep.space,
        "progress": progress(sweep, groups, stats.rows),
        "compute": compute(sweep, stats.rows),
    }
    if not detail:
        return Sweep.model_validate(view).model_dump(mode="json")
    view["jobs"] = sorted(
        (
            {
                "id": doc["_id"],
                "index": doc.get("sweepIndex", 0),
                "combination": doc.get("sweepIndex", 0) // sweep.seeds,
                "name": doc.get("name"),
                "status": doc["status"],
                "options": run_options(doc, sweep.varying),
                "value": metric_value(doc, sweep.metric),
                "latestMetrics": doc.get("latestMetrics"),
                "result": doc.get("result"),
                "warnings": doc.get("warnings") or [],
                "etaS": doc.get("etaS"),
                "startedAt": doc.get("startedAt"),
                "finishedAt": doc.get("finishedAt"),
                "circuit": doc.get("circuit"),
                "epoch": _trained(doc),
                "epochs": _epochs_of(doc) or None,
                "rung": run_rung(sweep, doc),
                "targetEpoch": doc.get("targetEpoch"),
                "stoppedEarly": doc.get("stoppedEarly"),
            }
            for doc in stats.rows
        ),
        key=lambda r: r["index"],
    )
    view["combinations"] = groups
    return SweepDetail.model_validate(view).model_dump(mode="json")


def stats_of(rows: list[dict[str, Any]]) -> SweepStats:
    stats = SweepStats()
    for doc in rows:
        stats.add(doc)
    return stats
