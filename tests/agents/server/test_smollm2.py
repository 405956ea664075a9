"""The chat server on SmolLM2 with the MiniLM router: routed answers over the openai client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from loraroute.router import Router
from loraroute.testing import make_random_lora

pytestmark = pytest.mark.slow


@pytest.fixture
def served(smollm2_on_registry, tmp_path):
    from loraroute.agents.server import BackgroundServer, LocalBackend, create_app

    reg, engine = smollm2_on_registry
    base = engine.base_path
    versions = {}
    for seed, (name, examples) in enumerate(
        {
            "legal": [
                "Is this NDA clause enforceable?",
                "Draft a contract clause",
                "What does the liability clause in my lease mean?",
            ],
            "math": [
                "Solve for x: 2x + 3 = 7",
                "What is the derivative of x^2?",
                "Compute 17 * 23",
                "Solve the equation 5x - 2 = 13",
                "Find z if 4z + 1 = 9",
            ],
        }.items(),
        start=1,
    ):
        folder = make_random_lora(base, tmp_path / name, seed=seed)
        versions[name] = reg.push(
            folder,
            name,
            domain=name,
            base_fingerprint=engine.base_fingerprint,
            routing_examples=examples,
        )
        reg.alias_set(name, "prod", versions[name].version)  # live: routed to
    app = create_app(LocalBackend(engine), router=Router(reg))
    with BackgroundServer(app) as srv:
        yield srv.url, versions


def test_openai_client_gets_routed_answers_on_smollm2(served):
    url, versions = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[
            {"role": "user", "content": "Is the non-compete clause in my contract enforceable?"}
        ],
        max_tokens=12,
        temperature=0,
    )
    assert raw.headers["x-loraroute-adapter"] == versions["legal"].ref
    out = raw.parse()
    assert out.choices[0].message.content.strip()  # SmolLM2 says something
    assert out.model_extra["loraroute"]["adapter_digest"] == versions["legal"].digest

    async def both() -> list:
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        qs = ["Solve for y: 3y - 4 = 11", "What does indemnify mean in my lease?"]
        outs = await asyncio.gather(
            *[
                aclient.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": q}], max_tokens=8
                )
                for q in qs
            ]
        )
        await aclient.close()
        return [o.model for o in outs]

    assert asyncio.run(both()) == [versions["math"].ref, versions["legal"].ref]
    chunks = list(
        client.chat.completions.create(
            model="math",
            messages=[{"role": "user", "content": "Compute 12 * 12"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tool_calls_through_openai_and_langchain(served):
    import json

    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
    kwargs = dict(
        model="base",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=48,
        temperature=0,
        tools=[WEATHER],
        tool_choice="required",
    )
    out = client.chat.completions.create(**kwargs)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert json.loads(calls[0].function.arguments) == json.loads(call.function.arguments)
    import langchain_openai as lc

    llm = lc.ChatOpenAI(base_url=url + "/v1", api_key="-", model="legal", max_tokens=48)
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Rome?")
    assert msg.tool_calls[0]["name"] == "get_weather" and "city" in msg.tool_calls[0]["args"]
