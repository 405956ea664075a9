"""No silent ignores: every parameter of the installed openai package's chat and completions
request types is honoured (accepted, and its effect tested elsewhere) or refused with a 400
naming it, including parameters added to the package after this test was written."""

from __future__ import annotations

import typing

import httpx
import openai
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from loraroute.agents.server import BackgroundServer
from loraroute.agents.server.params import HONOURED, REFUSED, RESTRICTED
from loraroute.agents.server.protocol import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "hello"}]
BASES = {
    "chat": {"model": "legal", "messages": USER, "max_tokens": 1},
    "completion": {"model": "legal", "prompt": "hello", "max_tokens": 1},
}
PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
MODELS = {"chat": ChatCompletionRequest, "completion": CompletionRequest}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# a value each honoured parameter accepts (a new honoured parameter needs one here)
ACCEPTED = {
    "model": "legal",
    "messages": USER,
    "prompt": "hello",
    "max_tokens": 1,
    "max_completion_tokens": 2,
    "temperature": 0.5,
    "top_p": 0.9,
    "n": 2,
    "stream": False,
    "stream_options": {"include_usage": True},
    "stop": ["\n"],
    "seed": 7,
    "user": "u-1",
    "safety_identifier": "s-1",
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"5": 1.5},
    "logprobs": True,
    "top_logprobs": 2,
    "response_format": {"type": "json_object"},
    "tools": [TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "echo": True,
    "add_special_tokens": True,
    "top_k": 5,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "stop_token_ids": [3],
    "include_stop_str_in_output": True,
    "ignore_eos": True,
    "min_tokens": 1,
    "truncate_prompt_tokens": 64,
    "allowed_token_ids": [5, 6, 7],
    "return_tokens_as_token_ids": True,
    "guided_json": {"type": "object"},
    "guided_regex": "[a-z]+",
    "guided_choice": ["yes", "no"],
    "guided_grammar": 'root ::= "a"',
    "structured_outputs": {"choice": ["yes", "no"]},
    "request_id": "req-params-1",
}
# a value each restricted parameter accepts and one it refuses
RESTRICTED_VALUES = {
    "skip_special_tokens": (True, False),
    "spaces_between_special_tokens": (True, False),
    "guided_decoding_backend": ("xgrammar", "outlines"),
    "priority": (0, 5),
    "modalities": (["text"], ["text", "audio"]),
    "store": (False, True),
    "service_tier": ("auto", "priority"),
    "best_of": (1, 3),
}
# values to send for refused parameters (anything else gets a plain value: refused by name)
REFUSED_VALUES = {
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["audio"],
    "prediction": {"type": "content", "content": "x"},
    "metadata": {"k": "v"},
    "web_search_options": {},
    "moderation": {"model": "omni-moderation-latest"},
    "prompt_cache_options": {"mode": "explicit"},
}
# two parameters with one meaning: only one per request
SEPARATE = {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"}


def _openai_params(kind: str) -> set[str]:
    if kind == "chat":
        types = [chat_create_params.CompletionCreateParamsBase]
        types += [
            chat_create_params.CompletionCreateParamsNonStreaming,
            chat_create_params.CompletionCreateParamsStreaming,
        ]
    else:
        types = [completion_create_params.CompletionCreateParamsBase]
        types += [
            completion_create_params.CompletionCreateParamsNonStreaming,
            completion_create_params.CompletionCreateParamsStreaming,
        ]
    return {name for t in types for name in typing.get_type_hints(t)}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base, tiny_adapter_factory):
    from loraroute.agents.server.testing import tiny_stack

    s = tiny_stack(
        tmp_path_factory.mktemp("srv-params"), tiny_base, {"legal": [tiny_adapter_factory(1)]}
    )
    with BackgroundServer(s.app()) as srv:
        yield srv.url
    s.close()


def _send(url: str, kind: str, name: str, value: object) -> tuple[int, dict | None]:
    """``(status, error)`` of a request with ``name=value``: through the official openai
    client when it is one of its parameters, else as a raw JSON body."""
    body = dict(BASES[kind])
    body[name] = value
    if name == "stream_options":
        body["stream"] = True
    if name == "top_logprobs":
        body["logprobs"] = True
    if kind == "completion" and name == "logprobs":
        body[name] = 2
    if name == "tool_choice" or name == "parallel_tool_calls":
        body["tools"] = [TOOL]
    if name in _openai_params(kind):
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        create = client.chat.completions.create if kind == "chat" else client.completions.create
        try:
            out = create(**body)
            if body.get("stream"):
                list(out)
        except openai.BadRequestError as exc:
            return 400, exc.body if isinstance(exc.body, dict) else {"message": str(exc)}
        return 200, None
    resp = httpx.post(url + PATHS[kind], json=body, timeout=60)
    return resp.status_code, resp.json().get("error") if resp.status_code != 200 else None


def _accepted(sent: tuple[int, dict | None], name: str) -> None:
    status, err = sent
    assert status == 200, (name, status, err)


def _refused_by_name(sent: tuple[int, dict | None], name: str) -> None:
    status, err = sent
    assert status == 400 and err is not None, (name, status, err)
    assert err["param"] == name or (err["param"] or "").startswith(name + "."), (name, err)
    assert name in err["message"], (name, err)


def test_the_tables_name_only_declared_parameters():
    for kind, model in MODELS.items():
        declared = set(model.model_fields)
        assert not HONOURED[kind] & set(RESTRICTED[kind])
        # every declared parameter is either honoured or restricted: none is accepted and dropped
        assert declared == HONOURED[kind] | set(RESTRICTED[kind]), kind
    assert not set(REFUSED) & (
        set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    )


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_every_openai_parameter_is_honoured_or_refused(served, kind):
    openai_params = _openai_params(kind)
    assert {"model", "temperature", "logprobs"} <= openai_params  # the types were read
    for name in sorted(openai_params):
        if name in HONOURED[kind]:
            assert name in ACCEPTED, f"honoured parameter {name!r} needs a value in ACCEPTED"
            _accepted(_send(served, kind, name, ACCEPTED[name]), name)
        elif name in RESTRICTED[kind]:
            ok, bad = RESTRICTED_VALUES[name]
            _accepted(_send(served, kind, name, ok), name)
            _refused_by_name(_send(served, kind, name, bad), name)
        else:  # unknown to the server (or added to openai later): refused by name
            _refused_by_name(_send(served, kind, name, REFUSED_VALUES.get(name, "x")), name)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_every_vllm_extra_parameter_is_accepted_or_refused(served, kind):
    vllm_extras = (HONOURED[kind] | set(RESTRICTED[kind])) - _openai_params(kind)
    for name in sorted(vllm_extras):
        if name in RESTRICTED[kind]:
            ok, bad = RESTRICTED_VALUES[name]
            _accepted(_send(served, kind, name, ok), name)
            _refused_by_name(_send(served, kind, name, bad), name)
            continue
        _accepted(_send(served, kind, name, ACCEPTED[name]), name)
    for name in ("use_beam_search", "prompt_logprobs", "chat_template", "bad_words", "whatever"):
        _refused_by_name(_send(served, kind, name, 1), name)
    _refused_by_name(
        _send(served, kind, "stream_options", {"continuous_usage_stats": True}), "stream_options"
    )
    two = dict(BASES[kind], guided_regex="a", guided_choice=["a"])
    resp = httpx.post(served + PATHS[kind], json=two, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] in SEPARATE


def test_null_means_not_given(served):
    body = {**BASES["chat"], "suffix": None, "functions": None, "top_k": None}
    assert httpx.post(served + PATHS["chat"], json=body, timeout=60).status_code == 200
