"""The server records model=auto decisions in the registry's database (off the request path),
keeps the text only when asked, and shows drift figures as gauges on /metrics."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraroute.agents.server import BackgroundServer
from loraroute.registry.decisions import DecisionLog

MATH_Q = "solve 3x + 1 = 10 for x"
OFF_TOPIC = "who painted the mona lisa"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-monitoring"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    yield s
    s.close()


def _chat(url: str, text: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _log(stack) -> DecisionLog:
    return DecisionLog.open(stack.registry.url)


def test_auto_requests_are_recorded_with_embedding_and_no_text(stack):
    app = stack.app(drift_interval=0)
    with BackgroundServer(app) as srv:
        _chat(srv.url, MATH_Q)
        _chat(srv.url, OFF_TOPIC)
        named = {"model": "math", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert httpx.post(srv.url + "/v1/chat/completions", json=named).status_code == 200
        app.state.lr.decisions.flush()
    log = _log(stack)
    try:
        rows = log.read(last=2, with_text=True)
    finally:
        log.close()
    assert [r.adapter for r in rows][0] == "math@1"  # the named request is not a decision
    first = rows[0]
    assert first.best == "math" and first.reason == "routed" and first.text is None
    assert first.margin is not None and first.margin > 0
    assert first.encoder == stack.router.encoder.name
    assert first.embedding is not None and first.embedding.dtype == np.float32
    assert first.embedding.shape == (stack.router.encoder.dim,)
    assert np.isclose(np.linalg.norm(first.embedding), 1.0, atol=1e-3)
    assert rows[1].text is None


def test_text_is_recorded_only_when_the_operator_opts_in(stack):
    app = stack.app(drift_interval=0, decision_log_text=True)
    with BackgroundServer(app) as srv:
        _chat(srv.url, "what is the derivative of x cubed")
        app.state.lr.decisions.flush()
    log = _log(stack)
    try:
        (row,) = log.read(last=1, with_text=True)
    finally:
        log.close()
    assert row.text == "what is the derivative of x cubed"


def test_the_log_can_be_switched_off(stack):
    app = stack.app(decision_log=False)
    log = _log(stack)
    try:
        before = log.count()
        with BackgroundServer(app) as srv:
            _chat(srv.url, MATH_Q)
            assert app.state.lr.decisions is None
        assert log.count() == before
    finally:
        log.close()


def test_drift_gauges_on_metrics(stack):
    app = stack.app(drift_interval=3600)
    with BackgroundServer(app) as srv:
        for q in (MATH_Q, OFF_TOPIC, "is this contract clause enforceable?"):
            _chat(srv.url, q)
        st = app.state.lr
        st.decisions.flush()
        report = st.drift.compute()
        assert report is not None and report.recent_n >= 3
        text = httpx.get(srv.url + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "loraroute_drift_traffic_share",
        "loraroute_drift_fallback_rate",
        "loraroute_drift_window_decisions",
        "loraroute_drift_example_distance",
        "loraroute_drift_alarm",
        "loraroute_decision_log_recorded",
    ):
        assert name in fams, name
    shares = {
        (s.labels["adapter"], s.labels["window"]): s.value
        for s in fams["loraroute_drift_traffic_share"].samples
    }
    assert shares[("math", "recent")] > 0
    recent = [
        s.value
        for s in fams["loraroute_drift_window_decisions"].samples
        if s.labels["window"] == "recent"
    ]
    assert recent == [report.recent_n]
    assert fams["loraroute_drift_alarm"].samples[0].value == 0.0  # too few decisions to judge
    recorded = fams["loraroute_decision_log_recorded"].samples[0].value
    assert recorded >= 3
