"""`gatequeue_retries_total{operation}` for a Prometheus registry: the tries after an error
this process made (service.retry.RETRIES), by operation. Both the API's `/metrics` and a
worker's `--metrics-port` register it; counts are per process (every app and worker of a
test process shares them)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.retry import RETRIES

NAME = "gatequeue_retries"


class RetriesCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            NAME, "Tries after an error (capped, jittered backoff), by operation.",
            labels=("operation",),
        )  # fmt: skip
        for operation, n in sorted(RETRIES.items()):
            family.add_metric((operation,), n)
        yield family
