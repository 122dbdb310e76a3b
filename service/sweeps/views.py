"""Reading sweeps for the API: a sweep with every run, or a page of sweeps in brief.

Both read the sweep's jobs (`JobStore.sweep_rows`): its best combination is the best mean
over seeds, and its ETA comes from its runs' times, neither of which one indexed query of
the best job can give.

A stored sweep this version cannot show (issue 26: a value nested 400 deep made its summary
fail to serialize, and with it `GET /sweeps` for everyone) never takes a view down: a page
leaves it out, and its own page and its cancel show it with what cannot be shown cut
(service.api.errors.echo). Either way it is logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from service.api.errors import echo
from service.store import Store
from service.sweeps.record import SweepRecord, SweepStats, stats_of, summarize

log = structlog.get_logger(__name__)

_ECHOED = ("base", "grid", "random", "runs")  # what a sweep shows of its request


async def sweep_detail(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    rows = await store.jobs.sweep_rows(sweep.id)
    return shown(sweep, stats_of(rows), detail=True)


def shown(sweep: SweepRecord, stats: SweepStats, *, detail: bool = False) -> dict[str, Any]:
    """`summarize`, or for a record that cannot be shown, its request cut to what can."""
    try:
        return summarize(sweep, stats, detail=detail)
    except ValueError as exc:
        log.error("sweep record cannot be shown; its request is cut", sweep=str(sweep.id),
                  error=str(exc)[:500])  # fmt: skip
    cut = sweep.model_copy(update={k: echo(getattr(sweep, k)) for k in _ECHOED})
    return summarize(cut, stats, detail=detail)


async def _stats(store: Store, sweeps: list[SweepRecord]) -> list[SweepStats]:
    rows = await asyncio.gather(*(store.jobs.sweep_rows(s.id) for s in sweeps))
    return [stats_of(r) for r in rows]


async def sweep_summaries(store: Store, sweeps: list[SweepRecord]) -> list[dict[str, Any]]:
    """A page of sweeps in brief, without those that cannot be shown."""
    if not sweeps:
        return []
    out = []
    for sweep, stats in zip(sweeps, await _stats(store, sweeps), strict=True):
        try:
            out.append(summarize(sweep, stats))
        except ValueError as exc:
            log.error("sweep record cannot be shown; not listed", sweep=str(sweep.id),
                      error=str(exc)[:500])  # fmt: skip
    return out


async def sweep_summary(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    """One sweep in brief (its cancel's answer)."""
    (stats,) = await _stats(store, [sweep])
    return shown(sweep, stats)
