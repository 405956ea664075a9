"""Prometheus metrics of the server (``GET /metrics``), one registry per app.

Two families side by side:

- vLLM's, under vLLM's names and label sets, so that the dashboards people run for vLLM
  (its Grafana JSON, its alerts) read this server unchanged: ``vllm:num_requests_running`` and
  ``vllm:num_requests_waiting`` (rows in the batch and waiting for one), the request
  histograms ``vllm:time_to_first_token_seconds``, ``vllm:time_per_output_token_seconds``
  (with its newer name ``vllm:inter_token_latency_seconds``), ``vllm:e2e_request_latency_seconds``,
  ``vllm:request_queue_time_seconds``, ``vllm:request_prefill_time_seconds``,
  ``vllm:request_decode_time_seconds``, ``vllm:request_inference_time_seconds``,
  ``vllm:request_prompt_tokens``, ``vllm:request_generation_tokens``,
  ``vllm:request_params_n``, ``vllm:request_params_max_tokens``,
  ``vllm:request_max_num_generation_tokens`` (the longest choice of a request), the counters
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` and
  ``vllm:request_success_total`` (by ``finished_reason``: stop, length, abort), all labelled
  ``model_name`` (the base model) and ``engine`` ("0"); and ``vllm:lora_requests_info``
  (labels ``max_lora``, ``running_lora_adapters``, ``waiting_lora_adapters``; the value is the
  time of the scrape, as vLLM sets it). A choice of ``n`` counts as one request, as vLLM's
  engine counts it.
- ours, ``loraroute_*``, per adapter (label ``adapter``: the version that answered, ``base``,
  or ``-`` when the request failed before an adapter was known, so client-chosen strings never
  become label values): requests by outcome, errors by code, latency, time to first token,
  prompt and completion tokens; routing decisions by adapter, reason and fallback, and the
  route confidence; and runtime gauges and counters (resident adapters, loads, evictions,
  running rows, queue depth) read from the backend at scrape time.
"""

from __future__ import annotations

import time
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
# vLLM's own buckets (vllm/v1/metrics/loggers.py), so that dashboards' quantiles agree
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
N_BUCKETS = (1, 2, 5, 10, 20)
VLLM_LABELS = ["model_name", "engine"]
FINISHED_REASONS = ("stop", "length", "abort")


class _RuntimeCollector:
    """Reads the backend's counters when Prometheus scrapes, so they are never stale."""

    def __init__(self, stats: Callable[[], dict[str, Any]], model_name: Callable[[], str]):
        self._stats = stats
        self._model_name = model_name

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        gauges = (
            ("loraroute_resident_adapters", "Adapters resident in the pool", "resident"),
            ("loraroute_max_resident_adapters", "Adapter slots in the pool", "max_resident"),
            ("loraroute_running_requests", "Rows decoding in the batch", "running"),
            ("loraroute_queue_depth", "Admitted rows waiting for a batch row", "queue_depth"),
            ("loraroute_inflight_requests", "Admitted rows (running + queued)", "inflight"),
            ("loraroute_queue_capacity", "Most rows admitted at once", "capacity"),
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
        labels = [self._model_name(), "0"]
        for name, doc, key in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", "running"),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "queue_depth"),
        ):  # fmt: skip
            family = GaugeMetricFamily(name, doc, labels=VLLM_LABELS)
            family.add_metric(labels, float(s.get(key) or 0))
            yield family
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        lora.add_metric(
            [
                str(s.get("max_resident") or 0),
                ",".join(s.get("waiting_adapters") or []),
                ",".join(s.get("running_adapters") or []),
            ],
            time.time(),
        )
        yield lora

    def describe(self) -> list[Any]:
        return []


class ServerMetrics:
    """The server's metrics; ``render()`` gives the exposition bytes and content type."""

    def __init__(self, stats: Callable[[], dict[str, Any]], model_name: Callable[[], str]):
        r = self.registry = CollectorRegistry()
        self.model_name = model_name
        self.requests = Counter(
            "loraroute_requests",
            "Generation requests by adapter and outcome (ok, error, rejected, cancelled, timeout)",
            ["adapter", "status"],
            registry=r,
        )
        self.errors = Counter(
            "loraroute_request_errors",
            "Failed generation requests by adapter and error code",
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
            "Time from request to first token (streamed or not), by adapter",
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
        self.route_decisions = Counter(
            "loraroute_route_decisions",
            'model=auto decisions by chosen adapter ("base" when the router fell back), the '
            'router\'s reason, and fallback ("true": no adapter fitted)',
            ["adapter", "reason", "fallback"],
            registry=r,
        )
        Gauge("loraroute_up", "1 while the server runs", registry=r).set(1)
        self._vllm(r)
        r.register(_RuntimeCollector(stats, model_name))  # type: ignore[arg-type]

    def _vllm(self, r: CollectorRegistry) -> None:
        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, VLLM_LABELS, buckets=buckets, registry=r)

        self.v_ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )  # fmt: skip
        self.v_tpot = hist(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TPOT_BUCKETS,
        )
        self.v_itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            TPOT_BUCKETS,
        )  # fmt: skip
        self.v_e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_BUCKETS,
        )
        self.v_queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_BUCKETS,
        )
        self.v_prefill = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_BUCKETS,
        )
        self.v_decode = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_BUCKETS,
        )
        self.v_inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_BUCKETS,
        )
        self.v_prompt_hist = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS
        )
        self.v_gen_hist = hist(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            TOKEN_BUCKETS,
        )
        self.v_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.v_max_gen = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            TOKEN_BUCKETS,
        )
        self.v_max_tokens = hist(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            TOKEN_BUCKETS,
        )
        self.v_prompt = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", VLLM_LABELS, registry=r
        )
        self.v_gen = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            VLLM_LABELS,
            registry=r,
        )
        self.v_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*VLLM_LABELS, "finished_reason"],
            registry=r,
        )

    def vllm_labels(self) -> list[str]:
        return [self.model_name(), "0"]

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
