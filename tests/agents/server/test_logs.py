"""Request ids (X-Request-Id accepted, made, returned, carried into logs) and the request log:
one structured line per request, never a key."""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import pytest

from loraroute.agents.server import BackgroundServer
from loraroute.agents.server.logs import (
    REQUEST_LOGGER,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
)

MATH_Q = "solve 3x + 1 = 10 for x"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-logs"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    with BackgroundServer(s.app(api_keys=["sk-secret-key-1"])) as srv:
        s.url = srv.url
        yield s
    s.close()


@pytest.fixture
def captured():
    """JSON lines of every record (the request log and the rest), as the CLI would log them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


AUTH = {"authorization": "Bearer sk-secret-key-1"}


def _chat(url: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json=body, headers={**AUTH, **headers}, timeout=60
    )


def test_request_ids_are_accepted_made_and_returned(stack):
    body = {"model": "legal", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    given = _chat(stack.url, body, **{"x-request-id": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    assert given.json()["id"] == "chatcmpl-trace-42.a"
    made = _chat(stack.url, body)
    assert len(made.headers["x-request-id"]) == 32 and made.json()["id"].endswith(
        made.headers["x-request-id"]
    )
    odd = _chat(stack.url, body, **{"x-request-id": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    named = _chat(stack.url, {**body, "request_id": "from-body"}, **{"x-request-id": "hdr"})
    assert named.headers["x-request-id"] == "from-body"
    assert named.json()["id"] == "chatcmpl-from-body"
    refused = httpx.get(stack.url + "/v1/models", headers={"x-request-id": "no-key-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key-1"
    missing = httpx.post(stack.url + "/v1/nothing", headers={**AUTH, "x-request-id": "nf-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "nf-1"


def test_one_json_line_per_request_and_no_secret(stack, captured):
    body = {"model": "auto", "messages": [{"role": "user", "content": MATH_Q}], "max_tokens": 3}
    ok = _chat(stack.url, body, **{"x-request-id": "log-ok-1"})
    assert ok.status_code == 200
    with httpx.stream(
        "POST",
        stack.url + "/v1/completions",
        json={"model": "legal", "prompt": "x", "max_tokens": 2, "stream": True, "user": "u-9"},
        headers={**AUTH, "x-request-id": "log-stream-1"},
    ) as r:
        list(r.iter_lines())
    bad = _chat(stack.url, {**body, "model": "nope"}, **{"x-request-id": "log-404-1"})
    assert bad.status_code == 404
    records = captured()
    want = {"log-404-1", "log-ok-1", "log-stream-1"}
    for _ in range(50):  # the line is written once the answer has left
        if want <= {r["request_id"] for r in records if r["logger"] == REQUEST_LOGGER}:
            break
        time.sleep(0.05)
        records = captured()
    requests = {r["request_id"]: r for r in records if r["logger"] == REQUEST_LOGGER}
    line = requests["log-ok-1"]
    assert line["status"] == 200 and line["outcome"] == "ok"
    assert line["model"] == "auto" and line["adapter"] == "math@1" and line["routed"] is True
    assert isinstance(line["route_score"], float) and line["route_reason"]
    assert line["prompt_tokens"] > 0 and 1 <= line["completion_tokens"] <= 3
    assert line["latency_s"] > 0 and line["path"] == "/v1/chat/completions"
    stream = requests["log-stream-1"]
    assert stream["status"] == 200 and stream["outcome"] == "ok" and stream["user"] == "u-9"
    assert stream["completion_tokens"] == 2 and stream["adapter"] == "legal@1"
    assert requests["log-404-1"]["status"] == 404 and requests["log-404-1"]["model"] == "nope"
    ours = [r["request_id"] for r in records if r["logger"] == REQUEST_LOGGER]
    assert sorted(i for i in ours if i.startswith("log-")) == [
        "log-404-1",
        "log-ok-1",
        "log-stream-1",
    ]
    assert "sk-secret-key-1" not in json.dumps(records)


def test_other_log_records_carry_the_request_id(stack, captured):
    body = {"model": "legal", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    stack.engine.evict("legal@1")  # the next request loads it again and logs that
    assert _chat(stack.url, body, **{"x-request-id": "load-7"}).status_code == 200
    loads = [r for r in captured() if "loaded adapter legal@1" in r["message"]]
    assert loads and loads[0]["request_id"] == "load-7"


def test_text_lines_name_the_request():
    record = logging.LogRecord(REQUEST_LOGGER, logging.INFO, "x", 1, "POST /v1/x 200", (), None)
    record.request = {"request_id": "r1", "status": 200, "adapter": "legal@1"}
    line = TextFormatter().format(record)
    assert line.startswith("INFO") and "adapter=legal@1" in line
    assert "[-]" in line  # no request in this context
