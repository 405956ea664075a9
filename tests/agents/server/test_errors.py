"""Bad input, API keys, CORS, the bounded queue, timeouts and client disconnects."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from loraroute.agents.server import BackgroundServer, ServerConfig

# greedy on the tiny base runs to max_tokens: no early EOS races the checks below
LONG = {
    "model": "base",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 480,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-err"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    with BackgroundServer(s.app(max_request_bytes=2 * 1024 * 1024)) as srv:
        s.url = srv.url
        yield s
    s.close()


def _chat(url: str, body: object = None, *, raw: bytes | None = None, **kw) -> httpx.Response:
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    data = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + "/v1/chat/completions", content=data, headers=headers, **kw)


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(f"{name}{{{want}}}" if labels else name) + r" ([0-9.e+]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def slow_steps(stack, monkeypatch):
    """Each decode step takes at least 10 ms, so a long answer outlasts the server's
    disconnect poll (every 0.25 s) on however fast a machine: the tiny base alone writes 480
    tokens in about 0.5 s."""
    scheduler = stack.engine.scheduler
    step = scheduler._step

    def slow(new):
        time.sleep(0.01)
        step(new)

    monkeypatch.setattr(scheduler, "_step", slow)


def _wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


USER = [{"role": "user", "content": "hello"}]
BAD = [
    ("malformed json", None, b'{"model": "auto", "messages": [', 400, "invalid_json", "JSON"),
    ("not an object", None, b"[1, 2]", 400, "invalid_json", "JSON object"),
    ("model wrong type", {"model": 5, "messages": USER}, None, 400, None, "model"),
    ("messages a string", {"model": "auto", "messages": "hi"}, None, 400, None, "messages"),
    ("missing model", {"messages": USER}, None, 400, None, "model"),
    (
        "temperature a word",
        {"model": "auto", "messages": USER, "temperature": "hot"},
        None,
        400,
        None,
        "temperature",
    ),
    (
        "negative max_tokens",
        {"model": "auto", "messages": USER, "max_tokens": -1},
        None,
        400,
        None,
        "max_tokens",
    ),
    ("empty messages", {"model": "auto", "messages": []}, None, 400, None, "messages"),
    (
        "unknown role",
        {"model": "auto", "messages": [{"role": "robot", "content": "x"}]},
        None,
        400,
        None,
        "role",
    ),
    ("unknown model", {"model": "legl", "messages": USER}, None, 404, "model_not_found", "legl"),
    (
        "malformed ref",
        {"model": "legal@@x", "messages": USER},
        None,
        404,
        "model_not_found",
        "legal@@x",
    ),
    (
        "image content",
        {
            "model": "base",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        None,
        400,
        None,
        "image_url",
    ),
    ("n=1000", {"model": "auto", "messages": USER, "n": 1000}, None, 400, None, "n"),
    (
        "top_logprobs alone",
        {"model": "auto", "messages": USER, "top_logprobs": 3},
        None,
        400,
        None,
        "logprobs=true",
    ),
    (
        "unknown parameter",
        {"model": "auto", "messages": USER, "functions": [{"name": "f"}]},
        None,
        400,
        "unsupported_parameter",
        "use tools",
    ),
    (
        "bad regex",
        {"model": "legal", "messages": USER, "guided_regex": "(unclosed"},
        None,
        400,
        None,
        "regular expression",
    ),
    (
        "1 MB message",
        {"model": "auto", "messages": [{"role": "user", "content": "lorem ipsum " * 90_000}]},
        None,
        400,
        "context_length_exceeded",
        "context window",
    ),
    (
        "3 MB body",
        {"model": "auto", "messages": [{"role": "user", "content": "x" * 3_000_000}]},
        None,
        413,
        "request_too_large",
        "max-request-bytes",
    ),
]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(stack, stream):
    for name, body, raw, status, code, needle in BAD:
        if stream and body is not None:
            body = {**body, "stream": True}
        resp = _chat(stack.url, body, raw=raw)
        assert resp.status_code == status, (name, resp.text[:300])
        err = resp.json()["error"]
        assert err["message"] and err["type"], name
        assert needle.lower() in err["message"].lower(), (name, err["message"])
        if code:
            assert err["code"] == code, (name, err)
    ok = _chat(stack.url, {"model": "legal", "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["model"] == "legal@1"


def test_unknown_route_and_method(stack):
    resp = httpx.get(stack.url + "/v1/nothing")
    assert resp.status_code == 404 and "/v1/nothing" in resp.json()["error"]["message"]
    resp = httpx.get(stack.url + "/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["message"]


def test_api_keys(stack):
    app = stack.app(api_keys=["k-one", "k-two"])
    with BackgroundServer(app) as srv:
        body = {"model": "base", "messages": USER, "max_tokens": 1}
        missing = _chat(srv.url, body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        bad = _chat(srv.url, body, headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert "nope" not in bad.text  # the rejected key is not echoed
        good = _chat(srv.url, body, headers={"authorization": "Bearer k-two"})
        assert good.status_code == 200
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/ready").status_code == 200


def test_keys_are_required_off_loopback():
    from pydantic import ValidationError

    for host in ("127.0.0.1", "localhost", "::1"):
        assert ServerConfig(host=host).api_keys == []
    with pytest.raises(ValidationError, match="--api-key"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", api_keys=["k"]).api_keys == ["k"]
    assert ServerConfig(host="10.1.2.3", insecure_no_auth=True).insecure_no_auth
    with pytest.raises(ValidationError, match="extra"):
        ServerConfig(hots="127.0.0.1")


def test_cors(stack):
    origin = "http://ui.example"
    app = stack.app(cors_origins=[origin])
    with BackgroundServer(app) as srv:
        pre = httpx.options(
            srv.url + "/v1/chat/completions",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == origin
        resp = _chat(
            srv.url,
            {"model": "legal", "messages": USER, "max_tokens": 1},
            headers={"origin": origin},
        )
        assert resp.headers["access-control-allow-origin"] == origin
        assert "X-LoraRoute-Adapter" in resp.headers["access-control-expose-headers"]
        other = httpx.options(
            srv.url + "/v1/models",
            headers={"origin": "http://evil.example", "access-control-request-method": "GET"},
        )
        assert "access-control-allow-origin" not in other.headers


def test_full_queue_answers_429_with_retry_after(stack, slow_steps):
    app = stack.app(max_concurrency=1, max_queue=0)
    with BackgroundServer(app) as srv, httpx.Client(timeout=30) as http:
        with http.stream(
            "POST", srv.url + "/v1/chat/completions", json={**LONG, "stream": True}
        ) as r:
            lines = r.iter_lines()
            next(line for line in lines if '"content"' in line)  # admitted and generating
            busy = _chat(srv.url, {"model": "base", "messages": USER, "max_tokens": 1})
            assert busy.status_code == 429
            assert int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["code"] == "queue_full"
            assert _metric(srv.url, "loraroute_requests_total", adapter="-", status="rejected") == 1
        _wait_for(lambda: _metric(srv.url, "loraroute_inflight_requests") == 0)
        again = _chat(srv.url, {"model": "base", "messages": USER, "max_tokens": 1})
        assert again.status_code == 200


def test_request_timeout_cancels_generation(stack):
    app = stack.app(request_timeout=0.05)
    with BackgroundServer(app) as srv:
        resp = _chat(srv.url, LONG)
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
        assert "request timeout" in resp.json()["error"]["message"]
        stream = _chat(srv.url, {**LONG, "stream": True})
        assert stream.status_code == 200
        events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == "timeout"
        assert _metric(srv.url, "loraroute_requests_total", adapter="base", status="timeout") == 2
        _wait_for(lambda: stack.engine.scheduler.running == 0)


def test_client_disconnect_cancels_generation(stack, slow_steps):
    app = stack.app()
    with BackgroundServer(app) as srv:
        with (
            httpx.Client(timeout=30) as http,
            http.stream(
                "POST", srv.url + "/v1/chat/completions", json={**LONG, "stream": True}
            ) as r,
        ):
            next(line for line in r.iter_lines() if '"content"' in line)
        # leaving the block closes the connection mid-answer
        _wait_for(
            lambda: (
                _metric(srv.url, "loraroute_requests_total", adapter="base", status="cancelled")
                == 1
            )
        )
        with pytest.raises(httpx.ReadTimeout):
            _chat(srv.url, LONG, timeout=httpx.Timeout(30, read=0.1))
        _wait_for(
            lambda: (
                _metric(srv.url, "loraroute_requests_total", adapter="base", status="cancelled")
                == 2
            )
        )
        _wait_for(lambda: stack.engine.scheduler.running == 0)
        assert _metric(srv.url, "loraroute_requests_total", adapter="base", status="ok") == 0


def test_a_lone_surrogate_is_a_400_not_a_500(stack):
    raw = b'{"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    r = _chat(stack.url, raw=raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"
    assert _chat(stack.url, {"model": "base", "messages": USER, "max_tokens": 1}).status_code == 200


def test_an_api_key_in_the_query_string_is_refused(stack):
    r = httpx.post(
        stack.url + "/v1/chat/completions?api_key=sk-secret-123",
        json={"model": "base", "messages": USER, "max_tokens": 1},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_in_query"
    assert "sk-secret-123" not in r.text


def test_the_registry_url_and_folders_never_reach_a_client(
    postgres_url, tiny_base, lr_home, tmp_path
):
    """A PostgreSQL registry URL with a password: not in any answer, also when the database
    fails under a running server; the server's folders are not shown either."""
    import psycopg2
    from sqlalchemy.engine import make_url

    from loraroute.agents.runtime import Engine
    from loraroute.agents.server import LocalBackend, create_app
    from loraroute.registry import open_registry

    url = make_url(postgres_url).set(password="hunter2-never").render_as_string(False)
    reg = open_registry(url, blob_dir=tmp_path / "blobs")
    engine = Engine(tiny_base, registry=reg, settings=lr_home, device="cpu", max_resident=2)
    app = create_app(LocalBackend(engine), open_router=False)
    try:
        with BackgroundServer(app) as srv:
            answers = [
                _chat(srv.url, {"model": "nope", "messages": USER, "max_tokens": 1}),
                httpx.get(srv.url + "/ready"),
                httpx.post(
                    srv.url + "/v1/load_lora_adapter",
                    json={"lora_name": "x", "lora_path": str(tmp_path / "elsewhere")},
                ),
            ]
            admin = psycopg2.connect(
                make_url(postgres_url).set(database="postgres").render_as_string(False)
            )
            admin.autocommit = True
            with admin.cursor() as cur:  # the registry's database goes away
                cur.execute(f'DROP DATABASE "{make_url(postgres_url).database}" WITH (FORCE)')
            admin.close()
            failed = _chat(srv.url, {"model": "legal", "messages": USER, "max_tokens": 1})
            answers.append(failed)
            assert (
                failed.status_code == 503
                and failed.json()["error"]["code"] == "registry_unavailable"
            )
    finally:
        engine.close()
    for r in answers:
        assert "hunter2" not in r.text and "postgresql://" not in r.text, r.text
        assert str(tmp_path) not in r.text and str(lr_home.home) not in r.text, r.text
