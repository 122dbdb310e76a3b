"""`gatequeue worker`: claims queued jobs and runs the trainer for them, one per slot.

`run_worker` is the entry point of the CLI (and of `python -m service.worker`); the
`Worker` class is what tests and benchmarks build directly with short timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

import structlog

from service.config import Settings
from service.mongo.connect import connect
from service.store import Store
from service.worker import prom
from service.worker.capacity import share_cpus, with_memory
from service.worker.gpus import Slot, resolve_slots
from service.worker.worker import DEFAULT_TRAINER_CMD, Worker

__all__ = ["DEFAULT_TRAINER_CMD", "Slot", "Worker", "default_worker_id", "run_worker"]

log = structlog.get_logger(__name__)


def default_worker_id(slots: Sequence[Slot]) -> str:
    """Stable across restarts of the same worker (so it finds its resume token again), and
    distinct for two workers that split one machine's GPUs between them."""
    return f"{socket.gethostname()}:{','.join(s.gpu for s in slots)}"


async def run_worker(
    settings: Settings,
    *,
    trainer_cmd: list[str] | None = None,
    worker_id: str | None = None,
    ready: asyncio.Event | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",  # scraped from other machines
    **options: Any,
) -> None:
    """Run one worker until cancelled; cancellation (the CLI's SIGTERM/SIGINT) is a graceful
    stop: no new claims, runs get their grace period, what is left is re-queued. A second
    cancellation skips the grace period. `options` go to `Worker` (timings, hooks). `ready`
    is set once the worker is started (its change stream open). `metrics_port`: serve the
    worker's own `/metrics` there (service.worker.prom)."""
    if not settings.mongodb_uri:
        raise ValueError("the worker needs a MongoDB: set MONGODB_URI")
    slots = share_cpus(await with_memory(await resolve_slots(settings.gpus), settings.slot_memory))
    log.info("slots", slots={s.gpu: (s.memory_bytes, s.threads) for s in slots})
    client = connect(settings.mongodb_uri)
    stack = contextlib.AsyncExitStack()
    try:
        worker = Worker(
            Store(client, settings.db_name),
            worker_id=worker_id or settings.worker_id or default_worker_id(slots),
            slots=slots,
            data_dir=settings.data_dir,
            trainer_cmd=trainer_cmd,
            lease_s=settings.lease_s,
            heartbeat_file=settings.heartbeat_file,
            data_cache_bytes=settings.data_cache,
            warm_start=settings.warm_start,
            **options,
        )
        if metrics_port is not None:
            served = prom.serving(worker.metrics, metrics_host, metrics_port)
            port = await stack.enter_async_context(served)
            log.info("worker metrics", url=f"http://{metrics_host}:{port}/metrics")
        main = asyncio.create_task(worker.run(), name="worker")
        if ready is not None:
            relay = asyncio.create_task(_relay(worker.ready, ready))
            main.add_done_callback(lambda _: relay.cancel())
        cancelled = False
        while True:
            try:
                await asyncio.shield(main)
                break
            except asyncio.CancelledError:
                if main.done():
                    raise
                cancelled = True
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                log.info("stop requested", again=worker.stopping)
                worker.stop()
        if cancelled:
            raise asyncio.CancelledError
    finally:
        await stack.aclose()
        await client.close()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
