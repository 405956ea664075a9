"""Prometheus metrics of the chat server (``GET /metrics``), one registry per app.

Per adapter (label ``adapter``: the version that answered, ``base``, or ``-`` when the request
failed before an adapter was known, so client-chosen strings never become label values):
requests by outcome, errors by code, latency, time to first token, prompt and completion
tokens, route confidence. Runtime gauges and counters (resident adapters, loads, evictions,
running batch rows, queue depth) are read from the backend at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - a declared dependency
    raise ImportError(
        "the server's /metrics needs prometheus-client: pip install prometheus-client"
    ) from exc

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class _RuntimeCollector:
    """Reads the backend's counters when Prometheus scrapes, so they are never stale."""

    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        gauges = (
            ("loraroute_resident_adapters", "Adapters resident in the pool", "resident"),
            ("loraroute_max_resident_adapters", "Adapter slots in the pool", "max_resident"),
            ("loraroute_running_requests", "Requests decoding in the batch", "running"),
            ("loraroute_queue_depth", "Admitted requests waiting for a batch row", "queue_depth"),
            ("loraroute_inflight_requests", "Admitted requests (running + queued)", "inflight"),
            ("loraroute_queue_capacity", "Most requests admitted at once", "capacity"),
        )
        for name, doc, key in gauges:
            if s.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=float(s[key]))
        counters = (
            ("loraroute_adapter_loads", "Adapters loaded into the pool", "loads"),
            ("loraroute_adapter_evictions", "Adapters evicted from the pool", "evictions"),
        )
        for name, doc, key in counters:
            if s.get(key) is not None:
                yield CounterMetricFamily(name, doc, value=float(s[key]))

    def describe(self) -> list[Any]:
        return []


class ServerMetrics:
    """The server's metrics; ``render()`` gives the exposition bytes and content type."""

    def __init__(self, stats: Callable[[], dict[str, Any]]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraroute_requests",
            "Chat completion requests by adapter and outcome "
            "(ok, error, rejected, cancelled, timeout)",
            ["adapter", "status"],
            registry=r,
        )
        self.errors = Counter(
            "loraroute_request_errors",
            "Failed chat completion requests by adapter and error code",
            ["adapter", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "loraroute_request_latency_seconds",
            "Time from request to last token, by adapter",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loraroute_time_to_first_token_seconds",
            "Time from request to first streamed token, by adapter",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "loraroute_prompt_tokens", "Prompt tokens by adapter", ["adapter"], registry=r
        )
        self.completion_tokens = Counter(
            "loraroute_completion_tokens", "Generated tokens by adapter", ["adapter"], registry=r
        )
        self.route_confidence = Histogram(
            "loraroute_route_confidence",
            "Router confidence of model=auto decisions, by chosen adapter",
            ["adapter"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        Gauge("loraroute_up", "1 while the server runs", registry=r).set(1)
        r.register(_RuntimeCollector(stats))  # type: ignore[arg-type]

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
