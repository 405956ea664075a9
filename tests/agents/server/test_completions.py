"""/v1/completions, logprobs, n > 1 and guided decoding through the real openai client, on the
tiny stack and through the proxy; answers checked against the openai package's own types."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
import torch
from openai.types import Completion
from openai.types.chat import ChatCompletion

from loraroute.agents.server import BackgroundServer, LocalBackend, ServerConfig, create_app

PROMPT = "The contract clause limits"
USER = [{"role": "user", "content": "is this contract clause enforceable?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-cmpl"),
        tiny_base,
        {"legal": [tiny_adapter_factory(1)], "math": [tiny_adapter_factory(3)]},
    )
    with BackgroundServer(s.app()) as srv:
        s.url = srv.url
        yield s
    s.close()


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def _post(stack, path: str, body: dict) -> dict:
    resp = httpx.post(stack.url + path, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_completion_of_text_and_token_prompts(stack, client):
    ids = stack.engine.tokenizer(PROMPT)["input_ids"]
    by_text = client.completions.create(model="legal", prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model="legal", prompt=ids, max_tokens=6, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.model == "legal@1" and by_text.object == "text_completion"
    assert by_text.usage.prompt_tokens == len(ids) and by_text.usage.completion_tokens <= 6
    alone = stack.engine.submit_ids(ids, "legal@1", max_new_tokens=6).result(timeout=60)
    assert by_text.choices[0].text == alone.text
    Completion.model_validate(_post(stack, "/v1/completions", {"model": "legal", "prompt": ids}))
    several = client.completions.create(
        model="math", prompt=[PROMPT, "Solve for x"], max_tokens=3, n=2, temperature=0
    )
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    texts = [c.text for c in several.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: the two choices agree
    assert several.usage.prompt_tokens == len(ids) + len(
        stack.engine.tokenizer("Solve for x")["input_ids"]
    )


def test_echo_and_logprobs_are_the_models_own(stack, client):
    ids = stack.engine.tokenizer(PROMPT)["input_ids"]
    out = client.completions.create(
        model="legal", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT)
    assert len(lp.tokens) == len(ids) + out.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    gen = stack.engine.submit_ids(ids, "legal@1", max_new_tokens=4).result(timeout=60)
    full = ids + gen.token_ids
    logits = stack.engine.logits(torch.tensor([full]), ["legal@1"])[0].float()
    want = torch.log_softmax(logits, -1)
    for pos in range(1, len(full)):
        assert lp.token_logprobs[pos] == pytest.approx(float(want[pos - 1, full[pos]]), abs=1e-4)
        top = lp.top_logprobs[pos]
        assert len(top) in (2, 3) and max(top.values()) == pytest.approx(
            float(want[pos - 1].max()), abs=1e-4
        )
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # lm-eval's loglikelihood request: echo, max_tokens 0 or 1, logprobs 1
    scored = client.completions.create(
        model="legal", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        lp.token_logprobs[1 : len(ids)], abs=1e-5
    )
    assert scored.usage.completion_tokens == 0 and scored.choices[0].finish_reason == "length"
    streamed = list(
        client.completions.create(
            model="legal", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in streamed if c.choices)
    tokens = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.tokens
    ]
    assert text == choice.text and tokens == lp.tokens
    assert streamed[-1].usage.total_tokens == out.usage.total_tokens


def test_chat_logprobs_n_and_seeds(stack, client):
    kwargs = dict(model="legal", messages=USER, max_tokens=5)
    one = client.chat.completions.create(temperature=0, logprobs=True, top_logprobs=3, **kwargs)
    entries = one.choices[0].logprobs.content
    assert len(entries) == one.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token for e in entries)
    assert "".join(e.token for e in entries) == one.choices[0].message.content
    ChatCompletion.model_validate(
        _post(stack, "/v1/chat/completions", {**kwargs, "logprobs": True, "n": 2})
    )
    sampled = client.chat.completions.create(temperature=1.0, n=3, seed=11, **kwargs)
    again = client.chat.completions.create(temperature=1.0, n=3, seed=11, **kwargs)
    texts = [c.message.content for c in sampled.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # choice i draws with seed + i
    assert sampled.usage.completion_tokens >= 3
    chunks = list(
        client.chat.completions.create(temperature=1.0, n=3, seed=11, stream=True, **kwargs)
    )
    by_index: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
    assert [by_index[i] for i in range(3)] == texts


def test_n_choices_share_the_batch(stack, client):
    scheduler = stack.engine.scheduler
    scheduler.max_rows_seen = 0
    client.completions.create(
        model="base", prompt=PROMPT, max_tokens=24, n=4, temperature=1.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert scheduler.max_rows_seen == 4  # the choices ran side by side, not one after another


def test_guided_decoding_keeps_answers_in_the_set(client):
    for _ in range(2):
        out = client.chat.completions.create(
            model="legal",
            messages=USER,
            max_tokens=24,  # room for the longest choice: a cut one would be a prefix
            temperature=1.0,
            n=3,
            extra_body={"guided_choice": ["yes", "no", "it depends"]},
        )
        assert {c.message.content for c in out.choices} <= {"yes", "no", "it depends"}
        assert {c.finish_reason for c in out.choices} == {"stop"}
    regex = client.completions.create(
        model="math",
        prompt="x =",
        max_tokens=8,
        temperature=1.0,
        extra_body={"guided_regex": "[0-9]{2}\\.[0-9]"},
    )
    assert re.fullmatch("[0-9]{2}\\.[0-9]", regex.choices[0].text)
    data = client.completions.create(
        model="math",
        prompt="a number:",
        max_tokens=12,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}},
    )
    assert data.choices[0].text in ("alpha", "beta")
    grammar = client.chat.completions.create(
        model="base",
        messages=USER,
        max_tokens=6,
        extra_body={"guided_grammar": 'root ::= "A" [0-9]'},
    )
    assert re.fullmatch("A[0-9]", grammar.choices[0].message.content)


def test_stop_strings_ids_and_penalties(stack, client):
    kwargs = dict(model="legal", prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    free = client.completions.create(max_tokens=10, **kwargs)
    ids = (
        stack.engine.submit_ids(
            stack.engine.tokenizer(PROMPT)["input_ids"],
            "legal@1",
            max_new_tokens=10,
            ignore_eos=True,
        )
        .result(timeout=60)
        .token_ids
    )
    stop_id = ids[3]
    cut = client.completions.create(
        max_tokens=10, model="legal", prompt=PROMPT, temperature=0,
        extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]},
    )  # fmt: skip
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].model_extra["stop_reason"] == stop_id
    assert cut.usage.completion_tokens == ids.index(stop_id) + 1
    text = free.choices[0].text
    at = next(i for i in range(2, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    stop = text[at : at + 2]
    cut = client.completions.create(max_tokens=10, stop=[stop], **kwargs)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].model_extra["stop_reason"] == stop
    kept = client.completions.create(
        max_tokens=10, stop=[stop], model="legal", prompt=PROMPT, temperature=0,
        extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
    )  # fmt: skip
    assert kept.choices[0].text == text[: text.index(stop)] + stop
    biased = client.completions.create(
        max_tokens=4, logit_bias={str(stop_id): 100}, model="legal", prompt=PROMPT, logprobs=0,
        extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True},
    )  # fmt: skip
    assert biased.choices[0].logprobs.tokens == [f"token_id:{stop_id}"] * 4
    penalised = client.completions.create(
        max_tokens=10, frequency_penalty=2.0, presence_penalty=2.0, **kwargs
    )
    assert penalised.usage.completion_tokens == 10
    topk = client.completions.create(
        max_tokens=6, model="legal", prompt=PROMPT, temperature=1.0, seed=3,
        extra_body={"top_k": 1, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )  # fmt: skip
    greedy = client.completions.create(max_tokens=6, **kwargs)
    assert topk.choices[0].text == greedy.choices[0].text  # top_k=1 is greedy


def test_bad_values_are_400s_naming_the_parameter(stack):
    vocab = stack.engine.vocab_size
    for path, body, param in [
        ("/v1/completions", {"prompt": [vocab + 5]}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": ["a", "b"], "model": "auto"}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "best_of": 3}, "best_of"),
        ("/v1/completions", {"prompt": "hi", "suffix": "x"}, "suffix"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": "x " * 600}, "prompt"),
        ("/v1/chat/completions", {"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias"),
        ("/v1/chat/completions", {"messages": USER, "logit_bias": {"1": 101}}, "logit_bias"),
        ("/v1/chat/completions", {"messages": USER, "top_k": -2}, "top_k"),
        ("/v1/chat/completions", {"messages": USER, "min_p": 2}, "min_p"),
        ("/v1/chat/completions", {"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/chat/completions", {"messages": USER, "stop_token_ids": [-1]}, "stop_token_ids"),
        ("/v1/chat/completions", {"messages": USER, "stream_options": {}}, "stream_options"),
        ("/v1/chat/completions", {"messages": USER, "guided_choice": []}, "guided_choice"),
        ("/v1/chat/completions", {"messages": USER, "guided_json": "{"}, "guided_json"),
        (
            "/v1/chat/completions",
            {"messages": USER, "guided_regex": "a", "guided_choice": ["a"]},
            "guided_choice",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "min_tokens": 9, "max_tokens": 2},
            "min_tokens",
        ),
        ("/v1/chat/completions", {"messages": USER, "request_id": "a b"}, "request_id"),
        ("/v1/chat/completions", {"messages": USER, "priority": 1}, "priority"),
    ]:
        body = {"model": "legal", **body}
        resp = httpx.post(stack.url + path, json=body, timeout=60)
        assert resp.status_code == 400, (body, resp.text)
        err = resp.json()["error"]
        assert err["param"] == param or err["param"].startswith(param), (body, err)
    stop_id = vocab + 1
    resp = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "legal", "messages": USER, "stop_token_ids": [stop_id]},
    )
    assert resp.status_code == 400 and str(stop_id) in resp.json()["error"]["message"]


@pytest.fixture(scope="module")
def engine_server(tiny_base, tmp_path_factory):
    """A second server acting as the external engine for the proxy (it reads the proxy's
    registry checkouts: one machine in the tests)."""
    from loraroute.agents.runtime.engine import Engine

    engine = Engine(tiny_base, device="cpu", max_resident=2)
    backend = LocalBackend(engine, adapter_roots=[tmp_path_factory.getbasetemp()])
    app = create_app(backend, config=ServerConfig(), open_router=False)
    with BackgroundServer(app) as srv:
        yield srv
    engine.close()


def test_the_proxy_forwards_completions_logprobs_and_n(stack, engine_server):
    from loraroute.agents.server.proxy import ProxyBackend

    backend = ProxyBackend(engine_server.url, registry=stack.registry)
    with BackgroundServer(create_app(backend, router=stack.router)) as front:
        proxied = openai.OpenAI(base_url=front.url + "/v1", api_key="-", max_retries=0)
        direct = openai.OpenAI(base_url=engine_server.url + "/v1", api_key="-", max_retries=0)
        kwargs = dict(prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1, n=2)
        got = proxied.completions.create(model="legal", **kwargs)
        want = direct.completions.create(model="legal@1", **kwargs)
        assert [c.text for c in got.choices] == [c.text for c in want.choices]
        assert got.choices[1].logprobs.token_logprobs == want.choices[1].logprobs.token_logprobs
        assert got.usage.total_tokens == want.usage.total_tokens
        chat = dict(messages=USER, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2, n=2)
        got_chat = proxied.chat.completions.create(model="legal", **chat)
        want_chat = direct.chat.completions.create(model="legal@1", **chat)
        assert got_chat.choices[1].logprobs == want_chat.choices[1].logprobs
        guided = proxied.chat.completions.create(
            model="legal", messages=USER, max_tokens=6, extra_body={"guided_choice": ["yes", "no"]}
        )
        assert guided.choices[0].message.content in ("yes", "no")
        with pytest.raises(openai.BadRequestError, match="token-id prompts"):
            proxied.completions.create(model="auto", prompt=[5, 6, 7])
