"""Prometheus metrics of one API app: requests by route and status, latency, the queue.

Each app has its own `CollectorRegistry`, so the tests can build many apps in one process
without "duplicated timeseries" errors. The job gauges (by status, by status and priority)
are refreshed on scrape from MongoDB (an async read, done in the /metrics handler before
rendering). The queue's events (a run started, its wait, its duration, a lease that
expired) are read off the process's jobs change stream (service.api.fanout), which every
API replica watches: each replica counts every event, so aggregate them across replicas with
`max`, not `sum` (docs/api.md). Retention removals are counted by the replica that made
them: `sum` them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.jobs.status import Status
from service.retry_metrics import RetriesCollector

# Latency buckets around the submit path's budget (p99 < 50 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Queue wait and run duration: seconds to days.
QUEUE_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0)
RUN_BUCKETS = (10.0, 60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0)
FINAL = frozenset({Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELLED.value})
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
# What an expired lease did to its job, by the job's new status.
EXPIRY_ACTIONS = {Status.PENDING.value: "requeued", Status.FAILED.value: "failed",
                  Status.CANCELLED.value: "cancelled"}  # fmt: skip


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
        self.jobs_by_priority = Gauge(
            "gatequeue_jobs_by_priority",
            "Jobs by status and priority, read from MongoDB at scrape time.",
            ("status", "priority"),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "gatequeue_queue_wait_seconds",
            "From a job's creation to the start of a run of it (each claim).",
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "gatequeue_run_duration_seconds",
            "From a run's start to its job's final status, by that status.",
            ("status",),
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.runs_started = Counter(
            "gatequeue_runs_started",
            "Runs started: claims won by workers (a claim lost writes nothing to see).",
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "gatequeue_lease_expiries",
            "Leases that expired, by what became of the job (requeued, failed, cancelled).",
            ("action",),
            registry=self.registry,
        )
        self.retention_removed = Counter(
            "gatequeue_retention_removed",
            "What this replica's retention passes removed: jobs, logBatches, metrics, files.",
            ("what",),
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "gatequeue_webhook_deliveries",
            "Webhook tries of this replica by outcome: delivered, retried (a try failed; "
            "another follows), failed (the tries are spent).",
            ("outcome",),
            registry=self.registry,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)
        self.registry.register(RetriesCollector())
        for status in FINAL:  # the histograms exist, at zero, before the first run ends
            self.run_duration.labels(status)
        for action in EXPIRY_ACTIONS.values():
            self.lease_expiries.labels(action)
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

    def set_queue(self, counts: Mapping[tuple[Status, int], int] | None) -> None:
        """Jobs by status (every status, zeros included) and by status and priority."""
        if counts is None:
            self.set_jobs(None)
            return
        by_status: dict[Status, int] = {}
        self.jobs_by_priority.clear()
        for (status, priority), n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
            self.jobs_by_priority.labels(status.value, str(priority)).set(n)
        self.set_jobs(by_status)

    def observe_job_change(self, change: Mapping[str, Any]) -> None:
        """One event of the jobs change stream: a claim (status Running, `startedAt` set), a
        final status of a run, or an expired lease (`leaseExpiries` counted up)."""
        if change.get("operationType") != "update":
            return
        fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
        status = fields.get("status")
        doc = change.get("fullDocument") or {}
        if "leaseExpiries" in fields and status in EXPIRY_ACTIONS:
            self.lease_expiries.labels(EXPIRY_ACTIONS[status]).inc()
        if status == Status.RUNNING.value and "startedAt" in fields:
            self.runs_started.inc()
            wait = _seconds(doc.get("createdAt"), fields["startedAt"])
            if wait is not None:
                self.queue_wait.observe(wait)
        elif status in FINAL and "finishedAt" in fields:
            ran = _seconds(doc.get("startedAt"), fields["finishedAt"])
            if ran is not None:
                self.run_duration.labels(status).observe(ran)

    def note_removed(self, what: str, counts: Mapping[str, int]) -> None:
        for name, n in counts.items():
            if n:
                self.retention_removed.labels(name).inc(n)

    def note_delivery(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _seconds(start: Any, end: Any) -> float | None:
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    return max(0.0, (end - start).total_seconds())
