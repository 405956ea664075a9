"""/metrics as Prometheus and a vLLM dashboard read it: vLLM's names and label sets, parsed
with prometheus_client's own text parser, with data for what the dashboard plots."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraroute.agents.server import BackgroundServer

MATH_Q = "solve 3x + 1 = 10 for x"
VLLM = {"model_name", "engine"}
# name -> (type, label names besides model_name/engine) of what vLLM exports
VLLM_METRICS = {
    "vllm:num_requests_running": ("gauge", set()),
    "vllm:num_requests_waiting": ("gauge", set()),
    "vllm:time_to_first_token_seconds": ("histogram", set()),
    "vllm:time_per_output_token_seconds": ("histogram", set()),
    "vllm:inter_token_latency_seconds": ("histogram", set()),
    "vllm:e2e_request_latency_seconds": ("histogram", set()),
    "vllm:request_queue_time_seconds": ("histogram", set()),
    "vllm:request_prefill_time_seconds": ("histogram", set()),
    "vllm:request_decode_time_seconds": ("histogram", set()),
    "vllm:request_inference_time_seconds": ("histogram", set()),
    "vllm:request_prompt_tokens": ("histogram", set()),
    "vllm:request_generation_tokens": ("histogram", set()),
    "vllm:request_max_num_generation_tokens": ("histogram", set()),
    "vllm:request_params_n": ("histogram", set()),
    "vllm:request_params_max_tokens": ("histogram", set()),
    "vllm:prompt_tokens": ("counter", set()),
    "vllm:generation_tokens": ("counter", set()),
    "vllm:request_success": ("counter", {"finished_reason"}),
}
# the series the panels of vLLM's Grafana dashboard (examples/online_serving/prometheus_grafana)
# query, each filtered by model_name; the KV-cache panels are not served (see the README)
DASHBOARD = [
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:time_per_output_token_seconds_sum",
    "vllm:time_per_output_token_seconds_count",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_max_num_generation_tokens_bucket",
    "vllm:request_params_n_bucket",
    "vllm:request_success_total",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-metrics"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    with BackgroundServer(s.app()) as srv:
        s.url = srv.url
        yield s
    s.close()


def _scrape(url: str) -> dict:
    text = httpx.get(url + "/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, sample_name: str, **labels: str) -> float:
    family_name = sample_name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            family_name = sample_name[: -len(suffix)]
    total = 0.0
    for s in families[family_name].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def test_vllm_names_and_label_sets(stack):
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="-", max_retries=0)
    client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": MATH_Q}], max_tokens=4
    )
    client.completions.create(model="legal", prompt="The contract", max_tokens=3, n=2)
    families = _scrape(stack.url)
    model = stack.engine.base_model_id
    for name, (kind, extra) in VLLM_METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == VLLM | extra, (name, sample.labels)
            assert sample.labels["model_name"] == model
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert reasons <= {"stop", "length", "abort"}
    lora = families["vllm:lora_requests_info"]
    assert lora.type == "gauge"
    (info,) = lora.samples
    assert set(info.labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert info.labels["max_lora"] == "4" and info.value == pytest.approx(time.time(), abs=60)
    for series in DASHBOARD:
        assert _value(families, series, model_name=model) > 0 or series.startswith(
            ("vllm:num_requests",)
        ), series
    # ours, beside them: routing by adapter and fallback, confidence, adapter loads/evictions
    assert _value(families, "loraroute_route_decisions_total", adapter="math@1", fallback="false")
    assert _value(families, "loraroute_route_confidence_count", adapter="math@1")
    for name in ("loraroute_adapter_loads", "loraroute_adapter_evictions"):
        assert families[name].type == "counter"


def test_time_to_first_token_for_every_request(stack):
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="-", max_retries=0)
    model = stack.engine.base_model_id
    before = _scrape(stack.url)
    client.chat.completions.create(
        model="legal", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )  # not streamed
    list(
        client.chat.completions.create(
            model="legal", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    after = _scrape(stack.url)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("vllm:time_to_first_token_seconds_count", model_name=model) == 2
    assert grew("loraroute_time_to_first_token_seconds_count", adapter="legal@1") == 2
    assert grew("vllm:e2e_request_latency_seconds_count", model_name=model) == 2
    assert grew("vllm:request_queue_time_seconds_count", model_name=model) == 2
    assert grew("vllm:time_per_output_token_seconds_count", model_name=model) >= 2
    finished = grew("vllm:request_success_total", model_name=model, finished_reason="length")
    finished += grew("vllm:request_success_total", model_name=model, finished_reason="stop")
    assert finished == 2


def test_running_rows_and_lora_adapters_while_generating(stack, monkeypatch):
    scheduler = stack.engine.scheduler
    step = scheduler._step

    def slow(new):
        time.sleep(0.02)
        step(new)

    monkeypatch.setattr(scheduler, "_step", slow)
    body = {
        "model": "math",
        "prompt": "x",
        "max_tokens": 60,
        "ignore_eos": True,
        "n": 2,
        "stream": True,
    }
    seen: dict = {}

    def scrape_when_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            families = _scrape(stack.url)
            running = _value(families, "vllm:num_requests_running")
            if running == 2:
                seen["families"] = families
                return
            time.sleep(0.05)

    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", stack.url + "/v1/completions", json=body) as r,
    ):
        watcher = threading.Thread(target=scrape_when_running)
        watcher.start()
        for _ in r.iter_lines():
            pass
        watcher.join()
    families = seen["families"]
    (info,) = families["vllm:lora_requests_info"].samples
    assert info.labels["running_lora_adapters"] == "math@1"
    assert _value(families, "vllm:num_requests_waiting") == 0
