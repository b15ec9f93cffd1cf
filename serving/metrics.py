"""Prometheus metrics of one service (its own registry, so device and cloud can share a process)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by the worker supervisor (serve.workers > 1)
disable_created_metrics()  # no *_created series: counts, sums and buckets only

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def read_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every sample in a ``/metrics`` page (Prometheus text format)."""
    return [(x.name, x.labels, x.value) for fam in text_string_to_metric_families(text) for x in fam.samples]


class Metrics:
    """Request counts and latencies for every service; ranking, fallback and cloud metrics for the device."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        r, p = self.registry, "persona"
        self.requests = Counter(f"{p}_requests", "HTTP requests", ["service", "route", "method", "status"], registry=r)
        self.latency = Histogram(
            f"{p}_request_seconds", "HTTP request latency", ["service", "route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.adaptation = Counter(f"{p}_rank_adaptation", "rankings by adaptation used", ["adaptation"], registry=r)
        self.fallback = Counter(f"{p}_cloud_fallback", "rankings that fell back from the cloud", ["reason"], registry=r)
        self.cloud_ask = Counter(f"{p}_cloud_ask", "request-policy decisions per new event", ["decision"], registry=r)
        self.cloud_rtt = Histogram(
            f"{p}_cloud_rtt_seconds", "device→cloud round trips", ["endpoint", "outcome"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(f"{p}_events", "events received", ["result"], registry=r)
        self.event_batch = Histogram(
            f"{p}_event_request_size", "events per /v1/events request", buckets=(1, 2, 5, 10, 50, 100, 500, 1000),
            registry=r,
        )
        self.rank_batch = Histogram(
            f"{p}_rank_batch_size", "rank requests per encoder pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.edit_batch = Histogram(
            f"{p}_edit_batch_size", "edit requests answered per forward pass (cloud)", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.reloads = Counter(f"{p}_reloads", "editor/prototype reloads", ["outcome"], registry=r)
        self.service = service

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(self.service, route, method, str(status)).inc()
        self.latency.labels(self.service, route).observe(seconds)

    def render(self) -> bytes:
        """This process's metrics, or every worker's summed when the workers share ``PROMETHEUS_MULTIPROC_DIR``."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
