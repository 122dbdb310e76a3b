"""What a sweep's `scheduler` and `search` fields are, and the pure decisions behind them.

A scheduler stops runs that are not going anywhere (docs/sweeps.md, "Schedulers"):
- ASHA (`{type: asha, minEpochs, reductionFactor}`): rungs at r, r*eta, r*eta^2, ... below
  the run's `epochs`; a run trains to its rung, checkpoints and stops; it is promoted (resumed
  from its checkpoint to the next rung) when its value is in the top 1/eta of the values
  recorded at that rung so far, itself included (Ray Tune's asynchronous rule: a free slot
  never waits for a rung to fill), else it ends with `stoppedEarly`.
- median (`{type: median, graceEpochs}`): from epoch g on, a run whose best value so far is
  below the median of the other runs' best values at that epoch is stopped.

A search picks the combinations (docs/sweeps.md, "Search"): `grid` (every combination, all
created up front, as before), `random` or `tpe` (`trials` combinations drawn from `space`,
created as runs finish, at most `maxParallel` unfinished at once). TPE is Optuna's sampler
through its ask-and-tell interface; the study is rebuilt from the sweep's runs every time a
trial is asked for, so nothing lives only in one process.

Everything here is a function of plain values (no MongoDB): service.sweeps.controller reads
the sweep and its runs, calls these and stores the outcome with a compare-and-set.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Unfinished trials of a random or TPE search at once when the sweep sets no `maxParallel`.
DEFAULT_IN_FLIGHT = 4
# The median rule compares with at least this many other runs at the epoch.
MEDIAN_MIN_OTHERS = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Asha(_Strict):
    type: Literal["asha"]
    minEpochs: int = Field(1, ge=1, le=1_000_000, description="The first rung's epoch (r).")
    reductionFactor: int = Field(
        4, ge=2, le=1000, description="eta: rungs at r*eta^k; the top 1/eta go on."
    )


class Median(_Strict):
    type: Literal["median"]
    graceEpochs: int = Field(
        1, ge=1, le=1_000_000, description="No run is stopped before this epoch."
    )


Scheduler = Annotated[Asha | Median, Field(discriminator="type")]


class GridSearch(_Strict):
    type: Literal["grid"]


class RandomSearchTrials(_Strict):
    type: Literal["random"]
    trials: int = Field(ge=1, description="Combinations drawn from `space`.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="The same seed, the same draws.")


class TpeSearch(_Strict):
    type: Literal["tpe"]
    trials: int = Field(ge=1, description="Combinations asked of TPE.")
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="The same seed and results, the same asks."
    )


Search = Annotated[GridSearch | RandomSearchTrials | TpeSearch, Field(discriminator="type")]


def adaptive(search: Mapping[str, Any] | None) -> bool:
    """Whether the sweep's runs are created as it goes (random or TPE), not up front."""
    return search is not None and search.get("type") in ("random", "tpe")


# -- ASHA ---------------------------------------------------------------------------------


def rungs(min_epochs: int, factor: int, epochs: int) -> list[int]:
    """The epochs a run stops at for a decision: r, r*eta, ... strictly below `epochs`."""
    out: list[int] = []
    at = min_epochs
    while at < epochs:
        out.append(at)
        at *= factor
    return out


def first_target(scheduler: Mapping[str, Any] | None, epochs: int) -> int | None:
    """The epoch a new run of the sweep stops at first (None: it trains to the end)."""
    if scheduler is None or scheduler.get("type") != "asha":
        return None
    steps = rungs(scheduler["minEpochs"], scheduler["reductionFactor"], epochs)
    return steps[0] if steps else None


def next_target(scheduler: Mapping[str, Any], epochs: int, reached: int) -> int | None:
    """The rung after `reached` (None: the run's last leg, to `epochs`)."""
    later = [r for r in rungs(scheduler["minEpochs"], scheduler["reductionFactor"], epochs)
             if r > reached]  # fmt: skip
    return later[0] if later else None


def rung_index(scheduler: Mapping[str, Any], epochs: int, epoch: int) -> int | None:
    steps = rungs(scheduler["minEpochs"], scheduler["reductionFactor"], epochs)
    return steps.index(epoch) if epoch in steps else None


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def asha_promotes(value: float | None, recorded: Iterable[float], factor: int,
                  *, lower_is_better: bool) -> bool:  # fmt: skip
    """Is `value` in the top 1/eta of `recorded` + [value]? A run without a value never is."""
    if value is None or math.isnan(value):
        return False
    sign = -1.0 if lower_is_better else 1.0
    values = [sign * v for v in recorded if not math.isnan(v)] + [sign * value]
    return sign * value >= _percentile(values, 1 - 1 / factor)


def median_stops(best: float | None, others: list[float], *, lower_is_better: bool) -> bool:
    """Is the run's best value worse than the median of the others' (enough others)?"""
    if len(others) < MEDIAN_MIN_OTHERS:
        return False
    if best is None or math.isnan(best):
        return True
    middle = _percentile(others, 0.5)
    return best > middle if lower_is_better else best < middle


# -- search -------------------------------------------------------------------------------


def search_space(space: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A random or TPE search's space: `space`, and each grid list as a choice."""
    return {**{k: {"choice": list(v)} for k, v in grid.items()}, **dict(space)}


def categorical(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def space_problem(space: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, why) of a space TPE cannot sample: choices must be plain values, once each."""
    for key, dist in space.items():
        if "choice" in dist:
            values = dist["choice"]
            bad = [v for v in values if not categorical(v)]
            if bad:
                return key, f"TPE samples choices of numbers, strings and booleans, not {bad[0]!r}"
            if len({repr(v) for v in values}) != len(values):
                return key, "a choice lists a value twice"
    return None


def _trial_rng(seed: int, trial: int) -> random.Random:
    return random.Random(zlib.crc32(f"{seed}:{trial}".encode()))


def sample_random(space: Mapping[str, Any], seed: int, trial: int) -> dict[str, Any]:
    """Trial `trial`'s draw: a function of (seed, trial) alone, whoever asks and when."""
    rng = _trial_rng(seed, trial)
    out: dict[str, Any] = {}
    for key, dist in space.items():
        if "choice" in dist:
            out[key] = dist["choice"][rng.randrange(len(dist["choice"]))]
        elif "intUniform" in dist:
            out[key] = rng.randint(*dist["intUniform"])
        elif "uniform" in dist:
            out[key] = rng.uniform(*dist["uniform"])
        else:
            lo, hi = dist["logUniform"]
            out[key] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return out


@dataclass(frozen=True)
class Told:
    """A finished trial as TPE is told it: `complete` (trained to the end) with its value, or
    pruned (stopped early) at `epoch` with its value there; None for a failed one."""

    params: dict[str, Any]
    value: float | None
    complete: bool
    epoch: int = 0


def _distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, dist in space.items():
        if "choice" in dist:
            out[key] = CategoricalDistribution(dist["choice"])
        elif "intUniform" in dist:
            out[key] = IntDistribution(*dist["intUniform"])
        elif "uniform" in dist:
            out[key] = FloatDistribution(*dist["uniform"])
        else:
            lo, hi = dist["logUniform"]
            out[key] = FloatDistribution(lo, hi, log=True)
    return out


def startup_trials(trials: int) -> int:
    """TPE's random start: Optuna's 10, fewer for a small budget (a third of it, at least 2)."""
    return min(10, max(2, trials // 3))


def ask_tpe(space: Mapping[str, Any], told: list[Told], *, seed: int, trial: int,
            trials: int, lower_is_better: bool) -> dict[str, Any]:  # fmt: skip
    """Trial `trial`'s parameters: a fresh in-memory study told every finished trial, asked
    once. The sampler's seed is (seed, trial): the same results give the same asks."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = _distributions(space)
    sampler = optuna.samplers.TPESampler(
        seed=zlib.crc32(f"tpe:{seed}:{trial}".encode()),
        n_startup_trials=startup_trials(trials),
    )
    study = optuna.create_study(
        sampler=sampler, direction="minimize" if lower_is_better else "maximize"
    )
    for t in told:
        params = {k: v for k, v in t.params.items() if k in distributions}
        if set(params) != set(distributions) or not _inside(params, distributions):
            continue
        if t.value is None or math.isnan(t.value):
            state, value, steps = TrialState.FAIL, None, None
        elif t.complete:
            state, value, steps = TrialState.COMPLETE, t.value, None
        else:
            state, value, steps = TrialState.PRUNED, None, {t.epoch: t.value}
        study.add_trial(
            create_trial(
                state=state, value=value, params=params, distributions=distributions,
                intermediate_values=steps,
            )
        )  # fmt: skip
    asked = study.ask(distributions)
    return dict(asked.params)


def _inside(params: Mapping[str, Any], distributions: Mapping[str, Any]) -> bool:
    for key, value in params.items():
        try:
            distributions[key].to_internal_repr(value)
        except (ValueError, TypeError):
            return False
        if not distributions[key]._contains(distributions[key].to_internal_repr(value)):
            return False
    return True
