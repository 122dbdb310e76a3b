"""Reading sweeps for the API: a sweep with every run, or a page of sweeps in brief."""

from __future__ import annotations

import asyncio
from typing import Any

from service.store import Store
from service.sweeps.record import SweepRecord, SweepStats, lower_is_better, stats_of, summarize


async def sweep_detail(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    rows = await store.jobs.sweep_rows(sweep.id)
    return summarize(sweep, stats_of(rows, sweep.metric), rows)


async def sweep_summaries(store: Store, sweeps: list[SweepRecord]) -> list[dict[str, Any]]:
    """One aggregation for the counts of the whole page, one small query per best run."""
    if not sweeps:
        return []
    counts = await store.jobs.sweep_counts([s.id for s in sweeps])
    bests = await asyncio.gather(
        *(store.jobs.sweep_best(s.id, s.metric, lowest=lower_is_better(s.metric)) for s in sweeps)
    )
    out = []
    for sweep, best in zip(sweeps, bests, strict=True):
        stats = SweepStats()
        if sweep.id in counts:
            stats.counts, stats.last_finish = counts[sweep.id]
        stats.best = best
        out.append(summarize(sweep, stats))
    return out
