"""The body of `POST /sweeps` and its expansion into one job request per combination.

A sweep is a grid (every combination of the listed values), crossed with an explicit list
of overrides (`runs`), plus random samples from a search space; each combination is the
sweep's `base` body with its overrides on top. Before anything is stored, every value the
request lists is checked alone against its option (picked or not: an unpicked choice or a
grid value that `runs` overrides is echoed back by every view of the sweep, so it must be a
value the option accepts), then every combination is validated by the very model that
validates `POST /jobs` (service.jobs.request). A sweep is all or nothing: a bad value is a
422 naming where it is (`grid.seed.1`), a bad combination one naming its index, its values
and the field, and no job exists (docs/sweeps.md).

Planning a sweep of a thousand runs takes tens to hundreds of milliseconds of CPU: the API
runs it in slices (`plan_in_slices`) so the event loop keeps serving meanwhile, after the
cheap bounds (`check_size`) have refused what is too large.

The expansion is deterministic: grid values in the order given, keys in the order given,
random samples from `random.Random(seed)`, so the same body always names the same jobs in
the same order (an `Idempotency-Key` replay compares bodies, not jobs).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.jobs.memory import TooBig
from service.jobs.notify import Notify
from service.jobs.options import PRINTABLE, RUN_NAMES
from service.jobs.record import DatasetRef, MemoryEstimate
from service.jobs.request import (
    REQUEST_OPTIONS,
    JobRequest,
    RequestBase,
    field_errors,
    value_errors,
)
from service.sweeps.search import (
    Scheduler,
    Search,
    adaptive,
    sample_random,
    search_space,
    space_problem,
)
from trainer.options import TRAINING_NAMES, resolve_defaults
from trainer.protocol import Epoch

DEFAULT_METRIC = "val_acc_discrete"  # selection on the validation split (docs/sweeps.md)
MAX_REPORTED = 10  # bad combinations listed in one 422
MAX_SEEDS = 20
MAX_FIELDS = 50  # bad values listed in one 422
SLICE_S = 0.005  # the longest the event loop waits on planning at a time

_KINDS = {o.name: o.kind for o in REQUEST_OPTIONS}
# A grid, a random space or a run may set any request field except these: the sweep sets
# its jobs' priority, and a name per run is given in `runs` (grids and samples get one).
_NOT_SWEPT = {"priority"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Choice(_Strict):
    choice: list[Any] = Field(min_length=1, max_length=1000)


Pair = Annotated[list[float], Field(min_length=2, max_length=2)]


class Uniform(_Strict):
    uniform: Pair


class LogUniform(_Strict):
    logUniform: Pair


class IntUniform(_Strict):
    intUniform: Annotated[list[int], Field(min_length=2, max_length=2)]


Space = Choice | Uniform | LogUniform | IntUniform


class RandomSearch(_Strict):
    n: int = Field(ge=1, description="How many samples.")
    seed: int = Field(
        0,
        ge=-(2**63),
        le=2**63 - 1,  # stored and echoed back: what BSON and JSON hold
        description="Seed of the sampler: the same seed, the same samples.",
    )
    space: dict[str, Space] = Field(
        min_length=1,
        description="Per option: `{choice: [...]}`, `{uniform: [lo, hi]}`, "
        "`{logUniform: [lo, hi]}` (lo > 0) or `{intUniform: [lo, hi]}` (inclusive).",
    )


class SweepRequest(_Strict):
    """The body of POST /sweeps."""

    name: str | None = Field(None, max_length=200, pattern=PRINTABLE)
    base: dict[str, Any] = Field(
        default_factory=dict, description="A POST /jobs body every run starts from."
    )
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="Every combination of these values is one run."
    )
    random: RandomSearch | None = Field(None, description="Random samples, added to the grid.")
    runs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Explicit overrides; crossed with the grid when both are given.",
    )
    maxParallel: int | None = Field(
        None, ge=1, le=10_000, description="At most this many of its jobs Running at once."
    )
    priority: int | None = Field(
        None, ge=-100, le=100, description="The priority of every job of the sweep."
    )
    metric: str = Field(
        DEFAULT_METRIC,
        pattern="^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="The EPOCH metric that ranks runs (a finished run's kept network's value "
        "where its `result` has it); names ending in `loss` rank lower first. A test metric "
        "is allowed, with a warning: selecting on the test set biases it.",
    )
    notify: Notify | None = Field(
        None,
        description="A webhook told when the sweep ends (every run finished): `{url, "
        "events}`; events `finished`, `succeeded` (no run Failed), `failed` (one did), "
        "`cancelled` (docs/webhooks.md). `base.notify` is each run's own.",
    )
    seeds: int = Field(
        1,
        ge=1,
        le=MAX_SEEDS,
        description="Runs per combination, with `seed` 0..seeds-1; tables show each "
        "combination's mean, standard deviation and n.",
    )
    scheduler: Scheduler | None = Field(
        None,
        description="Stop runs early: `{type: asha, minEpochs, reductionFactor}` (defaults 1 "
        'and 4) or `{type: median, graceEpochs}` (docs/sweeps.md, "Schedulers").',
    )
    search: Search | None = Field(
        None,
        description="How combinations are picked: `{type: grid}` (every one, the default), "
        "`{type: random, trials, seed}` or `{type: tpe, trials, seed}` over `space` and the "
        'grid\'s lists, created as runs finish (docs/sweeps.md, "Search").',
    )
    space: dict[str, Space] = Field(
        default_factory=dict,
        description="The search space of a random or TPE `search`, as `random.space`.",
    )

    @model_validator(mode="after")
    def _names(self) -> SweepRequest:
        problems: list[str] = []
        named: list[tuple[str, Iterable[str]]] = [
            ("grid", self.grid),
            ("random.space", self.random.space if self.random else {}),
            ("space", self.space),
            *((f"runs.{i}", run) for i, run in enumerate(self.runs)),
        ]
        for where, names in named:
            for key in names:
                if key not in _KINDS:
                    problems.append(f"{where}.{key}: unknown option")
                elif key in _NOT_SWEPT:
                    problems.append(f"{where}.{key}: set the sweep's own `priority` instead")
        if self.seeds > 1:
            problems += [
                f"{where}.seed: set either `seeds` or seed values, not both"
                for where, names in [("base", self.base), *named]
                if "seed" in names
            ]
        if problems:
            raise ValueError("; ".join(problems))
        spaces = [("space", self.space)]
        if self.random is not None:
            spaces.append(("random.space", self.random.space))
        for where, entries in spaces:
            for key, space in entries.items():
                problem = _space_problem(key, space)
                if problem:
                    raise ValueError(f"{where}.{key}: {problem}")
        return self

    @property
    def adaptive(self) -> bool:
        """Runs made as the sweep goes (random or TPE search), not all up front."""
        return adaptive(self.search_json())

    def search_json(self) -> dict[str, Any] | None:
        return None if self.search is None else self.search.model_dump()

    def scheduler_json(self) -> dict[str, Any] | None:
        return None if self.scheduler is None else self.scheduler.model_dump()

    def space_json(self) -> dict[str, Any]:
        """The search space as stored: `space` and each grid list as a choice."""
        return search_space({k: v.model_dump() for k, v in self.space.items()}, self.grid)

    def size(self) -> int:
        """How many jobs it names, without expanding it."""
        if self.search is not None and self.search.type != "grid":
            return self.search.trials * self.seeds
        explicit = 0
        if self.grid or self.runs:
            explicit = math.prod(len(v) for v in self.grid.values()) * max(1, len(self.runs))
        return (explicit + (self.random.n if self.random else 0)) * self.seeds


def _space_problem(key: str, space: Space) -> str | None:
    kind = _KINDS[key]
    if isinstance(space, Choice):
        return None
    if isinstance(space, IntUniform):
        ilo, ihi = space.intUniform
        if kind is not int:
            return f"intUniform draws integers; {key} is a {kind.__name__}"
        return None if ilo <= ihi else f"intUniform needs lo <= hi, got [{ilo}, {ihi}]"
    lo, hi = space.uniform if isinstance(space, Uniform) else space.logUniform
    if kind is not float:
        return (
            f"{'uniform' if isinstance(space, Uniform) else 'logUniform'} draws real numbers; "
            f"{key} is a {kind.__name__} (use intUniform or choice)"
        )
    if not lo <= hi:
        return f"needs lo <= hi, got [{lo}, {hi}]"
    if isinstance(space, LogUniform) and lo <= 0:
        return f"logUniform needs lo > 0, got {lo}"
    return None


def _sample(rng: random.Random, space: Space) -> Any:
    if isinstance(space, Choice):
        return space.choice[rng.randrange(len(space.choice))]
    if isinstance(space, IntUniform):
        return rng.randint(*space.intUniform)
    if isinstance(space, Uniform):
        return rng.uniform(*space.uniform)
    lo, hi = space.logUniform
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def combinations(spec: SweepRequest) -> Iterator[dict[str, Any]]:
    """The overrides of each run, in order: grid x runs, then the random samples; with
    `seeds` N > 1 each of them N times in a row, with `seed` 0..N-1 (so combination i is
    runs i*N .. i*N+N-1)."""
    for overrides in _points(spec):
        if spec.seeds == 1:
            yield overrides
        else:
            for seed in range(spec.seeds):
                yield {**overrides, "seed": seed}


def _points(spec: SweepRequest) -> Iterator[dict[str, Any]]:
    if spec.grid or spec.runs:
        keys = list(spec.grid)
        for point in itertools.product(*(spec.grid[k] for k in keys)):
            for run in spec.runs or [{}]:
                yield {**dict(zip(keys, point, strict=True)), **run}
    if spec.random is not None:
        rng = random.Random(spec.random.seed)
        for _ in range(spec.random.n):
            yield {k: _sample(rng, s) for k, s in spec.random.space.items()}


def listed_values(spec: SweepRequest) -> Iterator[tuple[str, str, Any]]:
    """(option, where, value) of every value the request lists: in `base`, the grid, the
    runs, a random choice and the bounds of a random range."""
    for key, value in spec.base.items():
        yield key, f"base.{key}", value
    for key, values in spec.grid.items():
        for i, value in enumerate(values):
            yield key, f"grid.{key}.{i}", value
    for i, run in enumerate(spec.runs):
        for key, value in run.items():
            yield key, f"runs.{i}.{key}", value
    spaces = [("space", spec.space)]
    if spec.random is not None:
        spaces.append(("random.space", spec.random.space))
    for where, entries in spaces:
        for key, space in entries.items():
            kind, listed = _listed(space)
            for i, value in enumerate(listed):
                yield key, f"{where}.{key}.{kind}.{i}", value


def _listed(space: Space) -> tuple[str, list[Any]]:
    if isinstance(space, Choice):
        return "choice", space.choice
    if isinstance(space, IntUniform):
        return "intUniform", list(space.intUniform)
    if isinstance(space, Uniform):
        return "uniform", list(space.uniform)
    return "logUniform", list(space.logUniform)


class SweepValuesInvalid(Exception):
    """Values the request lists that its options do not accept; nothing may be stored."""

    def __init__(self, fields: list[dict[str, str]], total: int) -> None:
        self.fields = fields
        self.total = total
        names = ", ".join(dict.fromkeys(f["field"] for f in fields))
        more = f" (and {total - len(fields)} more)" if total > len(fields) else ""
        super().__init__(f"invalid values: {names}{more}")


@dataclass(frozen=True)
class BadCombination:
    index: int
    values: dict[str, Any]
    fields: list[dict[str, str]]

    def describe(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.values.items()) or "the base alone"
        problems = "; ".join(f"{f['field']}: {f['message']}" for f in self.fields)
        return f"combination {self.index} ({values}): {problems}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "values": self.values, "fields": self.fields}


class SweepInvalid(Exception):
    """Some combinations are not valid jobs; nothing may be stored."""

    def __init__(self, bad: list[BadCombination], total_bad: int, total: int) -> None:
        self.bad = bad
        self.total_bad = total_bad
        self.total = total
        more = f" (and {total_bad - 1} more of {total})" if total_bad > 1 else f" (of {total})"
        super().__init__(bad[0].describe() + more)


class SweepTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the sweep names {size} jobs; at most {limit} are allowed in one sweep "
            "(GATEQUEUE_MAX_SWEEP)"
        )


class SweepEmpty(Exception):
    def __init__(self) -> None:
        super().__init__("a sweep needs at least one of `grid`, `random` or `runs`")


@dataclass(frozen=True)
class PlannedRun:
    index: int
    overrides: dict[str, Any]
    request: RequestBase
    values: dict[str, Any]  # the request's dump, made once, its chosen defaults resolved
    estimate: MemoryEstimate | None = None

    def split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(training options, run options), as `RequestBase.split`."""
        return (
            {k: self.values[k] for k in TRAINING_NAMES if k in self.values},
            {k: self.values[k] for k in RUN_NAMES if k in self.values},
        )


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: what to store."""

    spec: SweepRequest
    runs: list[PlannedRun]
    varying: list[str]
    priority: int
    # `dataset` values that name registered data sets, and what each resolved to
    # (service/api/datasets.py): every job of the sweep stores its own `datasetRef`.
    datasets: dict[str, DatasetRef] = field(default_factory=dict)

    def options_of(self, run: PlannedRun) -> dict[str, Any]:
        """The values of the options that vary across the sweep, for this run."""
        return {k: run.values[k] for k in self.varying}

    def job_name(self, run: PlannedRun) -> str:
        """A run's own `name`, else the sweep's name and what makes the run different."""
        if run.overrides.get("name"):
            return str(run.overrides["name"])
        prefix = self.spec.name or self.spec.base.get("name") or "sweep"
        label = " ".join(f"{k}={_short(v)}" for k, v in self.options_of(run).items())
        return f"{prefix} #{run.index} {label}".strip()[:200]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


Admit = Callable[[dict[str, Any]], MemoryEstimate]


def check_size(spec: SweepRequest, *, max_jobs: int) -> int:
    """How many jobs the sweep names, or SweepEmpty / SweepTooLarge: the cheap bounds,
    checked before any value is looked at."""
    size = spec.size()
    if spec.adaptive and size > max_jobs:
        message = (
            f"{size} runs ({spec.search.trials} trials x {spec.seeds} seeds); at most "  # type: ignore[union-attr]
            f"{max_jobs} are allowed in one sweep (GATEQUEUE_MAX_SWEEP)"
        )
        raise SweepValuesInvalid([_problem("search.trials", message)], 1)
    if size == 0:
        raise SweepEmpty()
    if size > max_jobs:
        raise SweepTooLarge(size, max_jobs)
    return size


def plan(spec: SweepRequest, *, max_jobs: int, admit: Admit | None = None) -> SweepPlan:
    """Check and expand the sweep in one go (tests, benches); the API uses
    `plan_in_slices`. Raises SweepEmpty, SweepTooLarge, SweepValuesInvalid or SweepInvalid,
    and only then: nothing partial ever comes out.

    `admit` (the API's memory admission) takes a combination's training options and returns
    its memory estimate, or raises TooBig: then the combination is a bad one."""
    steps = _planning(spec, check_size(spec, max_jobs=max_jobs), admit)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def plan_in_slices(
    spec: SweepRequest, *, max_jobs: int, admit: Admit | None = None, slice_s: float = SLICE_S
) -> SweepPlan:
    """`plan`, giving the event loop back every `slice_s` seconds of work: a sweep of a
    thousand runs no longer stops every other request for the time it takes to check."""
    steps = _planning(spec, check_size(spec, max_jobs=max_jobs), admit)
    until = time.perf_counter() + slice_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if time.perf_counter() >= until:
            # Twice: the first wake comes before the timers and I/O that fell due during
            # the slice (asyncio queues them behind it), the second after they ran; with one,
            # they would wait for the next slice too.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            until = time.perf_counter() + slice_s


def _planning(
    spec: SweepRequest, size: int, admit: Admit | None
) -> Generator[None, None, SweepPlan]:
    """The work of `plan`, one step per value and per combination."""
    problems: list[dict[str, str]] = []
    total_problems = 0
    for option, where, value in listed_values(spec):
        errors = value_errors(option, value, where)
        total_problems += len(errors)
        problems += errors[: MAX_FIELDS - len(problems)]
        yield
    searched = search_problems(spec)
    problems += searched
    if problems:
        raise SweepValuesInvalid(problems, total_problems + len(searched))
    priority = spec.priority if spec.priority is not None else spec.base.get("priority", 0)
    runs: list[PlannedRun] = []
    bad: list[BadCombination] = []
    total_bad = 0
    scheduled: list[dict[str, str]] = []
    points = probe_points(spec) if spec.adaptive else combinations(spec)
    for index, overrides in enumerate(points):
        yield
        body = {**spec.base, **overrides}
        if spec.priority is not None:
            body["priority"] = spec.priority
        try:
            request = JobRequest.model_validate(body)
            run = PlannedRun(index, overrides, request, resolve_defaults(request.model_dump()))
            if admit is not None:
                run = replace(run, estimate=admit(run.split()[0]))
        except (ValidationError, TooBig) as exc:
            total_bad += 1
            if len(bad) < MAX_REPORTED:
                problems = field_errors(exc) if isinstance(exc, ValidationError) else exc.fields
                bad.append(BadCombination(index, overrides, problems))
            continue
        scheduled += run_problems(spec, run.values)
        runs.append(run)
    if bad:
        raise SweepInvalid(bad, total_bad, size)
    if scheduled:
        unique = list({(p["field"], p["message"]): p for p in scheduled}.values())
        raise SweepValuesInvalid(unique[:MAX_FIELDS], len(unique))
    varying = _varying(spec, runs)
    if spec.adaptive:  # `runs` were probes: the sweep's runs are made as it goes
        varying = [k for k in spec.space_json() if k != "name"]
        varying += ["seed"] if spec.seeds > 1 else []
        runs = []
    return SweepPlan(spec, runs, varying, priority if isinstance(priority, int) else 0)


PROBES = 32  # combinations of a random or TPE space validated before the sweep is stored


def probe_points(spec: SweepRequest) -> Iterator[dict[str, Any]]:
    """What a random or TPE sweep is checked with before anything is stored: every
    combination of an all-choice space of up to PROBES, else PROBES draws, each with every
    seed (a trial is validated again when it is made: service.sweeps.controller)."""
    space = spec.space_json()
    if (
        all("choice" in d for d in space.values())
        and math.prod(len(d["choice"]) for d in space.values()) <= PROBES
    ):
        keys = list(space)
        points = [dict(zip(keys, p, strict=True))
                  for p in itertools.product(*(space[k]["choice"] for k in keys))]  # fmt: skip
    else:
        points = [sample_random(space, -1, i) for i in range(PROBES)]
    for point in points:
        if spec.seeds == 1:
            yield point
        else:
            for seed in range(spec.seeds):
                yield {**point, "seed": seed}


def _problem(field: str, message: str) -> dict[str, str]:
    """One bad field of a sweep's scheduler or search, in the shape of `value_errors`'."""
    return {"field": field, "message": message, "type": "sweep_search"}


def search_problems(spec: SweepRequest) -> list[dict[str, str]]:
    """What makes the `scheduler` and `search` of a sweep unusable, each naming its field."""
    out: list[dict[str, str]] = []
    chooses = spec.scheduler is not None or spec.adaptive
    if chooses and spec.metric not in Epoch.METRICS:  # a typo would stop every run unranked
        out.append(_problem("metric", (
            f"a scheduler or a random or TPE search selects by a metric the trainer writes "
            f"each epoch; {spec.metric!r} is none of {', '.join(Epoch.METRICS)}"
        )))  # fmt: skip
    elif chooses and spec.metric.startswith("test_"):
        out.append(_problem("metric", (
            f"a scheduler or a random or TPE search selects by the sweep's metric; "
            f"{spec.metric} is a test-set metric (select by a validation metric such as "
            "val_acc_discrete)"
        )))  # fmt: skip
    if spec.adaptive:
        if spec.runs or spec.random is not None:
            out.append(_problem("search", (
                "a random or TPE search draws from `space` and the grid's lists; it takes "
                "no `runs` or `random`"
            )))  # fmt: skip
        for key in spec.space:
            if key in spec.grid:  # one would silently win over the other
                out.append(_problem(f"space.{key}", (
                    f"{key} is both a grid list and in `space`: give it once"
                )))  # fmt: skip
        space = spec.space_json()
        if not space:
            out.append(_problem("space", "a random or TPE search needs a `space` (or grid "
                                "lists) to draw from"))  # fmt: skip
        problem = space_problem(space)
        if problem is not None:
            key, why = problem
            out.append(_problem(f"{'space' if key in spec.space else 'grid'}.{key}", why))
    elif spec.space:
        out.append(_problem("space", "`space` is the space of a random or TPE `search`; set "
                            "`search` or use `random.space`"))  # fmt: skip
    return out


def run_problems(spec: SweepRequest, values: dict[str, Any]) -> list[dict[str, str]]:
    """What the scheduler cannot do with one run's values (its epochs, its validation)."""
    out: list[dict[str, str]] = []
    chooses = spec.scheduler is not None or spec.adaptive
    if chooses and spec.metric.startswith("val_") and values.get("validFraction") == 0:
        out.append(_problem("base.validFraction", (
            f"the sweep selects by {spec.metric}, a validation metric; a run with "
            "validFraction 0 has no validation split"
        )))  # fmt: skip
    scheduler = spec.scheduler
    epochs = values.get("epochs")
    if scheduler is not None and scheduler.type == "asha" and isinstance(epochs, int):
        if scheduler.minEpochs > epochs:
            out.append(_problem("scheduler.minEpochs", (
                f"minEpochs ({scheduler.minEpochs}) is above a run's epochs ({epochs})"
            )))  # fmt: skip
    return out


def _varying(spec: SweepRequest, runs: list[PlannedRun]) -> list[str]:
    """Options whose value is not the same in every run, in the order the body names them."""
    named: dict[str, None] = dict.fromkeys(spec.grid)
    if spec.random is not None:
        named |= dict.fromkeys(spec.random.space)
    for run in spec.runs:
        named |= dict.fromkeys(run)
    named.pop("name", None)
    if spec.seeds > 1:
        named["seed"] = None
    return [k for k in named if len({_key(r.values[k]) for r in runs}) > 1]


def _key(value: Any) -> Any:
    return repr(value) if isinstance(value, list | dict) else value
