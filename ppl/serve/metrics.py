"""`GET /metrics`: the server's state in Prometheus' text format (`prometheus_client`).

* `ppl_requests_total{endpoint, status}` and `ppl_request_seconds{endpoint}` (a histogram);
* `ppl_queue_depth` and `ppl_runs_in_flight`, read when scraped;
* `ppl_tokens_fed_total`, `ppl_forward_passes_total` and `ppl_rows_per_pass` (a histogram),
  from the engine's shared steps;
* `ppl_runs_completed_total` and `ppl_runs_cancelled_total{reason}` ("client_gone",
  "timeout"): a run whose client went away is counted there once its rows are freed.

Each server has its own registry, so that two in one process (the tests) do not mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's metrics: request counts and latencies, and the engine's state."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ppl_requests",
            "HTTP requests answered",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ppl_request_seconds",
            "time to answer a request",
            ["endpoint"],
            registry=self.registry,
        )
        self.rows = Histogram(
            "ppl_rows_per_pass",
            "rows in each shared forward pass",
            buckets=ROWS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))
        engine.steps.on_pass = lambda rows, tokens: self.rows.observe(rows)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The engine's counts, read when scraped."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        e = self.engine
        yield GaugeMetricFamily("ppl_queue_depth", "requests waiting to run", value=e.queued)
        yield GaugeMetricFamily(
            "ppl_runs_in_flight", "runs sharing the forward passes", value=e.running
        )
        yield CounterMetricFamily(
            "ppl_tokens_fed", "tokens fed to the model", value=e.steps.tokens_fed
        )
        yield CounterMetricFamily(
            "ppl_forward_passes", "shared forward passes made", value=e.steps.forward_calls
        )
        yield CounterMetricFamily("ppl_runs_completed", "runs that ended", value=e.completed)
        cancelled = CounterMetricFamily(
            "ppl_runs_cancelled", "runs ended from outside", labels=["reason"]
        )
        for reason, n in e.cancelled_by.items():
            cancelled.add_metric([reason], n)
        yield cancelled
