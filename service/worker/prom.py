"""A worker's own Prometheus metrics (`gatequeue worker --metrics-port N`): its slots, the
claims it won and lost, the runs it started and how they ended, its trainers' exit codes,
the expired leases its sweeper acted on, its data cache's hits and misses and its retries
by operation. The API's `/metrics` has the queue as a whole
(docs/api.md); these are what only a worker sees.

Each worker has its own registry (tests run many in one process); the endpoint is a tiny
aiohttp app on its own port, so a stuck claim loop never blocks a scrape for long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from service.retry_metrics import RetriesCollector


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.slots = Gauge(
            "gatequeue_worker_slots", "This worker's slots, by state.", ("state",),
            registry=self.registry,
        )  # fmt: skip
        self.claims = Counter(
            "gatequeue_worker_claims",
            "Claims this worker tried, by outcome: won, or lost (another worker or a cancel "
            "took the job first).",
            ("outcome",),
            registry=self.registry,
        )
        self.runs_started = Counter(
            "gatequeue_worker_runs_started", "Runs this worker started.", registry=self.registry
        )
        self.runs_ended = Counter(
            "gatequeue_worker_runs_ended",
            "Runs that ended, by outcome (Succeeded, Failed, Cancelled, released, lost, "
            "unreachable).",
            ("outcome",),
            registry=self.registry,
        )
        self.exit_codes = Counter(
            "gatequeue_worker_trainer_exits",
            "Trainer processes that exited, by exit code (negative: killed by that signal).",
            ("code",),
            registry=self.registry,
        )
        self.leases_expired = Counter(
            "gatequeue_worker_leases_expired",
            "Expired leases this worker's sweeper acted on, by action.",
            ("action",),
            registry=self.registry,
        )
        self.data_cache = Counter(
            "gatequeue_worker_data_cache",
            "Runs' look-ups of their registered data set in this worker's cache, by outcome: "
            "hit (cached and intact, or being fetched for another run), miss (downloaded).",
            ("outcome",),
            registry=self.registry,
        )
        self.registry.register(RetriesCollector())  # gatequeue_retries_total{operation}
        for outcome in ("won", "lost"):
            self.claims.labels(outcome)
        for outcome in ("hit", "miss"):
            self.data_cache.labels(outcome)
        self._slot_counts: Callable[[], tuple[int, int]] | None = None

    def note_data_cache(self, outcome: str) -> None:
        self.data_cache.labels(outcome).inc()

    def count_slots(self, counts: Callable[[], tuple[int, int]]) -> None:
        """(busy, total), read at each scrape."""
        self._slot_counts = counts

    def render(self) -> bytes:
        if self._slot_counts is not None:
            busy, total = self._slot_counts()
            self.slots.labels("busy").set(busy)
            self.slots.labels("free").set(total - busy)
        return generate_latest(self.registry)


@asynccontextmanager
async def serving(metrics: WorkerMetrics, host: str, port: int) -> AsyncIterator[int]:
    """`GET /metrics` on host:port while the block runs; yields the port it listens on."""

    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
