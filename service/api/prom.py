"""Prometheus metrics of one API app: requests by route and status, latency, jobs by status.

Each app has its own `CollectorRegistry`, so the tests can build many apps in one process
without "duplicated timeseries" errors, and the jobs gauge is refreshed on scrape from
MongoDB (an async read, done in the /metrics handler before rendering).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.jobs.status import Status

# Latency buckets around the submit path's budget (p99 < 50 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gatequeue_http_requests",
            "HTTP requests answered, by route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "gatequeue_http_request_duration_seconds",
            "Time from receiving a request to having its response, by route template.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Gauge(
            "gatequeue_jobs",
            "Jobs in the queue by status, read from MongoDB at scrape time.",
            ("status",),
            registry=self.registry,
        )
        self.store_up = Gauge(
            "gatequeue_store_up",
            "1 if the last scrape could count jobs in MongoDB, else 0.",
            registry=self.registry,
        )
        # Label children cached: `labels()` takes a lock and builds a tuple on every call.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def set_jobs(self, counts: Mapping[Status, int] | None) -> None:
        if counts is None:
            self.store_up.set(0)
            return
        self.store_up.set(1)
        for status in Status:
            self.jobs.labels(status.value).set(counts.get(status, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
