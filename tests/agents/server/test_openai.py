"""The real openai client (sync, async, streaming) and LangChain's ChatOpenAI against the server."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

MATH_Q = "solve 3x + 1 = 10 for x"
LEGAL_Q = "is this contract clause enforceable in my lease?"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server import BackgroundServer
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-home"),
        tiny_base,
        {
            "legal": [tiny_adapter_factory(1), tiny_adapter_factory(2)],
            "math": [tiny_adapter_factory(3)],
            "cooking": [tiny_adapter_factory(4)],
        },
    )
    with BackgroundServer(s.app()) as srv:
        s.url = srv.url
        yield s
    s.close()


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_auto_routes_and_reports_the_adapter(stack, client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=_ask(MATH_Q), max_tokens=6, temperature=0
    )
    math = stack.registry.resolve("math:prod")
    assert raw.headers["x-loraroute-adapter"] == math.ref
    assert raw.headers["x-loraroute-adapter-digest"] == math.digest
    assert raw.headers["x-loraroute-routed"] == "true"
    assert 0 <= float(raw.headers["x-loraroute-route-confidence"]) <= 1
    comp = raw.parse()
    assert comp.model == math.ref
    meta = comp.model_extra["loraroute"]
    assert meta["adapter"] == math.ref and meta["adapter_digest"] == math.digest
    assert meta["routed"] is True and meta["requested_model"] == "auto"
    assert meta["alternatives"] and meta["alternatives"][0][0] in ("legal", "cooking")
    assert comp.usage.total_tokens == comp.usage.prompt_tokens + comp.usage.completion_tokens
    assert comp.choices[0].finish_reason in ("stop", "length")


def test_pinned_refs_aliases_and_base(stack, client):
    legal = stack.versions["legal"]
    out = client.chat.completions.create(model="legal:prod", messages=_ask("hi"), max_tokens=3)
    assert out.model == legal[0].ref
    out = client.chat.completions.create(model="legal@2", messages=_ask("hi"), max_tokens=3)
    assert out.model == legal[1].ref and out.model_extra["loraroute"]["routed"] is False
    out = client.chat.completions.create(model="legal", messages=_ask("hi"), max_tokens=3)
    assert out.model == legal[1].ref  # a bare name is the latest version
    base = client.chat.completions.create(model="base", messages=_ask(MATH_Q), max_tokens=3)
    assert base.model == "base" and base.model_extra["loraroute"]["adapter"] is None


def test_alias_repointing_is_served_at_once(stack, client):
    legal = stack.versions["legal"]
    stack.registry.alias_set("legal", "prod", 2)
    try:
        out = client.chat.completions.create(model="legal:prod", messages=_ask("hi"), max_tokens=2)
        assert out.model_extra["loraroute"]["adapter_digest"] == legal[1].digest
    finally:
        stack.registry.alias_set("legal", "prod", 1)


def test_streaming_matches_the_whole_answer(client):
    kwargs = dict(model="cooking", messages=_ask("how long do I boil an egg"), temperature=0)
    whole = client.chat.completions.create(max_tokens=12, **kwargs)
    chunks = list(
        client.chat.completions.create(
            max_tokens=12, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["loraroute"]["adapter"] == whole.model
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_tiny_temperature_is_greedy(client):
    kwargs = dict(model="math", messages=_ask(MATH_Q), max_tokens=6)
    greedy = client.chat.completions.create(temperature=0, **kwargs)
    tiny = client.chat.completions.create(temperature=1e-80, **kwargs)  # found by schemathesis
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def test_async_client_concurrent_requests_match_one_by_one(stack, client):
    prompts = [(m, q) for m in ("legal@1", "math", "cooking", "base") for q in (MATH_Q, LEGAL_Q)]
    alone = [
        client.chat.completions.create(model=m, messages=_ask(q), max_tokens=8, temperature=0)
        .choices[0]
        .message.content
        for m, q in prompts
    ]

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)
        outs = await asyncio.gather(
            *[
                aclient.chat.completions.create(
                    model=m, messages=_ask(q), max_tokens=8, temperature=0
                )
                for m, q in prompts
            ]
        )
        texts = [o.choices[0].message.content for o in outs]
        stream = await aclient.chat.completions.create(
            model="auto", messages=_ask(LEGAL_Q), max_tokens=5, stream=True
        )
        parts = [c async for c in stream]
        assert parts[0].model_extra["loraroute"]["adapter"] == "legal@1"
        await aclient.close()
        return texts

    assert asyncio.run(run()) == alone


def test_models_lists_base_auto_adapters_and_aliases(stack, client):
    client.chat.completions.create(model="math", messages=_ask("hi"), max_tokens=1)
    cards = {m.id: m for m in client.models.list().data}
    assert {"base", "auto", "legal", "legal:prod", "math", "math:prod", "cooking"} <= set(cards)
    assert cards["legal:prod"].model_extra["root"] == "legal@1"
    assert cards["legal"].model_extra["root"] == "legal@2"
    assert cards["math"].model_extra["loraroute"]["resident"] is True
    assert cards["auto"].model_extra["loraroute"]["routes"] == ["cooking", "legal", "math"]
    assert client.models.retrieve("legal:prod").id == "legal:prod"
    with pytest.raises(openai.NotFoundError, match="legal:nope"):
        client.models.retrieve("legal:nope")


def test_langchain_chat_openai_sees_routed_answers(stack):
    import langchain_openai as lc

    llm = lc.ChatOpenAI(
        base_url=stack.url + "/v1",
        api_key="unused",
        model="auto",
        max_tokens=6,
        temperature=0,
        max_retries=0,
        include_response_headers=True,
    )
    msg = llm.invoke(MATH_Q)
    assert msg.response_metadata["model_name"] == "math@1"
    assert msg.response_metadata["headers"]["x-loraroute-adapter"] == "math@1"
    assert msg.usage_metadata["output_tokens"] >= 1
    chunks = list(llm.stream(LEGAL_Q))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.response_metadata["model_name"] == "legal@1"
    amsg = asyncio.run(llm.ainvoke("how long do I boil an egg"))
    assert amsg.response_metadata["model_name"] == "cooking@1"


def test_health_ready_and_metrics(stack, client):
    assert httpx.get(stack.url + "/health").json()["status"] == "ok"
    ready = httpx.get(stack.url + "/ready").json()
    assert ready["status"] == "ready" and ready["detail"]["router"] == "ready"
    client.chat.completions.create(model="auto", messages=_ask(MATH_Q), max_tokens=2)
    text = httpx.get(stack.url + "/metrics").text
    assert 'loraroute_requests_total{adapter="math@1",status="ok"}' in text
    assert 'loraroute_route_confidence_count{adapter="math@1"}' in text
    assert 'loraroute_completion_tokens_total{adapter="math@1"}' in text
    assert 'loraroute_request_latency_seconds_count{adapter="math@1"}' in text
    for name in ("resident_adapters", "adapter_loads_total", "adapter_evictions_total"):
        assert f"loraroute_{name} " in text
    assert "loraroute_queue_depth 0.0" in text


def test_json_output_and_tool_choice_errors(client):
    import json

    kwargs = dict(model="legal", messages=_ask("a number?"), max_tokens=30, temperature=0)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    data = client.chat.completions.create(response_format=fmt, **kwargs)
    if data.choices[0].finish_reason == "stop":  # else cut by max_tokens mid-object
        assert isinstance(json.loads(data.choices[0].message.content)["n"], int)
    else:
        assert data.choices[0].message.content.lstrip().startswith("{")
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with pytest.raises(openai.BadRequestError, match="nope"):
        client.chat.completions.create(
            tools=[tool], tool_choice={"type": "function", "function": {"name": "nope"}}, **kwargs
        )
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(response_format={"type": "yaml"}, **kwargs)
