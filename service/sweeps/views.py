"""Reading sweeps for the API: a sweep with every run, or a page of sweeps in brief.

Both read the sweep's jobs (`JobStore.sweep_rows`): its best combination is the best mean
over seeds, and its ETA comes from its runs' times, neither of which one indexed query of
the best job can give.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.store import Store
from service.sweeps.record import SweepRecord, stats_of, summarize


async def sweep_detail(store: Store, sweep: SweepRecord) -> dict[str, Any]:
    rows = await store.jobs.sweep_rows(sweep.id)
    return summarize(sweep, stats_of(rows), detail=True)


async def sweep_summaries(store: Store, sweeps: list[SweepRecord]) -> list[dict[str, Any]]:
    rows = await asyncio.gather(*(store.jobs.sweep_rows(s.id) for s in sweeps))
    return [summarize(s, stats_of(r)) for s, r in zip(sweeps, rows, strict=True)]
