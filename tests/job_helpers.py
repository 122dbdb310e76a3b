"""Helpers for tests that put jobs into the store directly (imported as `job_helpers`)."""

from __future__ import annotations

from typing import Any

from service.jobs import memory
from service.jobs.options import RUN_OPTIONS
from service.jobs.record import JobRecord, new_job
from service.store import Store
from trainer.options import resolve_defaults


async def insert_job(
    store: Store,
    hyperparameters: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    estimate: bool = False,
    **run_options: Any,
) -> tuple[JobRecord, bool]:
    """A Pending job as `POST /jobs` would store it (run options by their request names,
    `maxAttempts=2`; with `estimate`, its memory estimate too); returns (the job, created).
    Nulls that stand for a chosen value are resolved, as the API resolves them."""
    hyperparameters = resolve_defaults(hyperparameters)
    options = {o.name: run_options.pop(o.name, o.default) for o in RUN_OPTIONS}
    if run_options:
        raise TypeError(f"not run options: {sorted(run_options)}")
    job = new_job(
        hyperparameters, options,
        memory_estimate=memory.estimate(hyperparameters) if estimate else None,
    )  # fmt: skip
    return await store.jobs.insert(job, idempotency_key=idempotency_key, body_hash=body_hash)
