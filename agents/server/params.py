"""From a validated request to what a backend generates: every parameter honoured or refused.

:data:`HONOURED` lists the parameters that change the answer as OpenAI's and vLLM's
documentation say (or, for ``user`` and ``safety_identifier``, that are written to the request
log); :data:`RESTRICTED` those accepted only with the values that change nothing (any other
value is refused with a 400 naming the parameter); every other parameter is refused, with the
hint in :data:`REFUSED` when there is one. ``tests/agents/server/test_parameters.py`` walks
the installed ``openai`` package's request types and checks that each of their parameters is
one of these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError
from .protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest

# Below this, sampling is greedy for all practical purposes, and logits / temperature would
# overflow to inf (NaN probabilities) for temperatures like 1e-80.
MIN_TEMPERATURE = 1e-3
MAX_STOP = 16
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions

_SHARED = {
    "model", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "max_tokens",
    "logprobs", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
    "include_stop_str_in_output", "ignore_eos", "min_tokens", "truncate_prompt_tokens",
    "allowed_token_ids", "return_tokens_as_token_ids", "guided_json", "guided_regex",
    "guided_choice", "guided_grammar", "structured_outputs", "request_id",
}  # fmt: skip
HONOURED: dict[str, frozenset[str]] = {
    "chat": frozenset(
        _SHARED
        | {
            "messages",
            "max_completion_tokens",
            "top_logprobs",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "safety_identifier",
        }
    ),  # fmt: skip
    "completion": frozenset(_SHARED | {"prompt", "echo", "add_special_tokens"}),
}
_RESTRICTED_SHARED = {
    "skip_special_tokens": "only true",
    "spaces_between_special_tokens": "only true",
    "guided_decoding_backend": "only xgrammar or auto",
    "priority": "only 0",
}
RESTRICTED: dict[str, dict[str, str]] = {
    "chat": {
        **_RESTRICTED_SHARED,
        "modalities": 'only ["text"]',
        "store": "only false (nothing is stored)",
        "service_tier": "only auto or default",
    },
    "completion": {**_RESTRICTED_SHARED, "best_of": "only equal to n (no reranking)"},
}
REFUSED: dict[str, str] = {
    "functions": "use tools",
    "function_call": "use tool_choice",
    "suffix": "insertion is not supported",
    "audio": "this server answers with text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the served models do not reason in a separate channel",
    "verbosity": "use max_tokens and the prompt",
    "web_search_options": "there is no web search",
    "metadata": "nothing is stored",
    "prompt_logprobs": "use /v1/completions with echo and logprobs",
    "use_beam_search": "beam search is not supported",
    "chat_template": "the model's own chat template is used",
    "continuous_usage_stats": "ask for include_usage",
}


@dataclass
class Prepared:
    """A validated request: what to generate, for a backend (fields per ``kind``)."""

    kind: str  # "chat" or "completion"
    sampling: dict[str, Any]  # SamplingParams fields
    max_tokens: int = 1  # 0: nothing generated (a completion's echo alone)
    n: int = 1
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat
    prompts: list[str] | list[list[int]] = field(default_factory=list)  # completion
    echo: bool = False
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    constraint: dict[str, Any] | None = None
    constraint_param: str | None = None  # the parameter that asked for the constraint
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    include_stop_str: bool = False
    tokens_as_ids: bool = False
    truncate_prompt_tokens: int | None = None
    add_special_tokens: bool = True
    body: dict[str, Any] = field(default_factory=dict)  # the request as sent (proxy forwards it)

    @property
    def choices(self) -> int:
        """Rows this request puts in the batch."""
        return self.n * (len(self.prompts) if self.kind == "completion" else 1)


def _refuse(name: str, message: str) -> APIError:
    return APIError(400, message, param=name, code="unsupported_parameter")


def _check_restricted(req: GenerationRequest, kind: str) -> None:
    values = {
        "skip_special_tokens": req.skip_special_tokens is False,
        "spaces_between_special_tokens": req.spaces_between_special_tokens is False,
        "guided_decoding_backend": req.guided_decoding_backend not in (None, "xgrammar", "auto"),
        "priority": bool(req.priority),
    }
    if isinstance(req, ChatCompletionRequest):
        values["modalities"] = req.modalities is not None and req.modalities != ["text"]
        values["store"] = bool(req.store)
        values["service_tier"] = req.service_tier not in (None, "auto", "default")
    if isinstance(req, CompletionRequest):
        values["best_of"] = req.best_of is not None and req.best_of != (req.n or 1)
    for name, refused in values.items():
        if refused:
            value = getattr(req, name)
            raise _refuse(
                name,
                f"{name}={json.dumps(value)} is not supported by this server "
                f"({RESTRICTED[kind][name]}); leave it out",
            )
    if req.stream_options is not None:
        if not req.stream:
            raise _refuse("stream_options", "stream_options is only allowed with stream=true")
        if req.stream_options.include_obfuscation:
            raise _refuse(
                "stream_options",
                "stream_options.include_obfuscation=true is not supported (no obfuscation "
                "field is added); leave it out or send false",
            )


def _max_tokens(
    asked: int | None, default: int, limit: int | None, name: str = "max_tokens"
) -> int:
    max_tokens = default if asked is None else asked
    if limit is not None and max_tokens > limit:
        raise APIError(
            400,
            f"{name} is too large: {max_tokens}; this server allows at most {limit}",
            param=name,
            code="max_tokens_too_large",
        )
    return max_tokens


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        if not re.fullmatch(r"\d{1,9}", key.strip()):
            raise APIError(
                400,
                f'logit_bias keys are token ids, got {key[:40]!r}; send e.g. {{"50256": -100}}',
                param="logit_bias",
            )
        out.append((int(key), float(value)))
    return tuple(out)


def _constraint(req: GenerationRequest) -> tuple[dict[str, Any] | None, str | None]:
    """The one grammar the request asks for (guided_*, structured_outputs, response_format)."""
    asked: list[tuple[str, dict[str, Any]]] = []
    if req.guided_json is not None:
        asked.append(("guided_json", _json_spec(req.guided_json, "guided_json")))
    if req.guided_regex is not None:
        asked.append(("guided_regex", {"kind": "regex", "regex": req.guided_regex}))
    if req.guided_choice is not None:
        asked.append(("guided_choice", _choice_spec(req.guided_choice, "guided_choice")))
    if req.guided_grammar is not None:
        asked.append(("guided_grammar", {"kind": "grammar", "grammar": req.guided_grammar}))
    so = req.structured_outputs
    if so is not None:
        given = [
            (name, value)
            for name, value in (
                ("json", so.json_schema),
                ("regex", so.regex),
                ("choice", so.choice),
                ("grammar", so.grammar),
                ("json_object", so.json_object or None),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise _refuse(
                "structured_outputs",
                "structured_outputs needs exactly one of json, regex, choice, grammar, "
                f"json_object (got {', '.join(n for n, _ in given) or 'none'})",
            )
        name, value = given[0]
        param = "structured_outputs"
        spec: dict[str, Any]
        if name == "json":
            spec = _json_spec(value, param)
        elif name == "choice":
            spec = _choice_spec(list(value), param)  # type: ignore[arg-type]
        elif name == "json_object":
            spec = {"kind": "json_schema", "schema": {"type": "object"}}
        else:  # regex, grammar
            spec = {"kind": name, name: value}
        asked.append((param, spec))
    fmt = _response_format(req.response_format)
    if fmt is not None:
        asked.append(("response_format", fmt))
    if len(asked) > 1:
        names = ", ".join(n for n, _ in asked)
        raise _refuse(asked[1][0], f"send one output constraint at a time, got {names}")
    return (asked[0][1], asked[0][0]) if asked else (None, None)


def _json_spec(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise APIError(400, f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise APIError(400, f"{param} must be a JSON schema object", param=param)
    return {"kind": "json_schema", "schema": value}


def _choice_spec(choices: list[str], param: str) -> dict[str, Any]:
    if not choices or not all(choices):
        raise APIError(400, f"{param} must list at least one non-empty string", param=param)
    return {"kind": "choice", "choices": list(choices)}


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"kind": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(
                400,
                "response_format.json_schema.schema must be a JSON-schema object",
                param="response_format",
                code="invalid_response_format",
            )
        return {"kind": "json_schema", "schema": schema}
    raise APIError(
        400,
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
        param="response_format",
        code="invalid_response_format",
    )


def _sampling(req: GenerationRequest, max_tokens: int, logprobs: int | None) -> dict[str, Any]:
    temperature = 1.0 if req.temperature is None else req.temperature
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP:
        raise APIError(
            400, f"stop has {len(stop)} sequences; send at most {MAX_STOP}", param="stop"
        )
    return {
        "max_new_tokens": max_tokens,
        "temperature": 0.0 if temperature < MIN_TEMPERATURE else temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "stop": tuple(stop),
        "seed": None if req.seed is None else req.seed % (2**63),
        "top_k": req.top_k or 0,
        "min_p": req.min_p or 0.0,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "presence_penalty": req.presence_penalty or 0.0,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "logit_bias": _logit_bias(req.logit_bias),
        "allowed_token_ids": tuple(req.allowed_token_ids) if req.allowed_token_ids else None,
        "stop_token_ids": tuple(req.stop_token_ids or ()),
        "min_tokens": req.min_tokens or 0,
        "ignore_eos": bool(req.ignore_eos),
        "logprobs": logprobs,
    }


def _common(req: GenerationRequest, kind: str, max_choices: int) -> None:
    _check_restricted(req, kind)
    max_tokens = getattr(req, "max_tokens", None)
    if req.min_tokens and max_tokens is not None and req.min_tokens > max_tokens:
        raise APIError(
            400,
            f"min_tokens ({req.min_tokens}) is larger than max_tokens ({max_tokens})",
            param="min_tokens",
        )
    if req.request_id is not None and not re.fullmatch(
        r"[A-Za-z0-9._:/+=-]{1,128}", req.request_id
    ):
        raise APIError(
            400,
            "request_id must be 1-128 letters, digits or ._:/+=-",
            param="request_id",
        )
    n = req.n or 1
    if n > max_choices:
        raise APIError(
            400,
            f"n={n} is more than this server generates for one request ({max_choices}); "
            f"send several requests",
            param="n",
        )


def prepare_chat(
    req: ChatCompletionRequest,
    body: dict[str, Any],
    *,
    default_max_tokens: int,
    limit: int | None,
    max_choices: int,
) -> Prepared:
    """A chat request as a backend generates it (raises :class:`APIError` 400 on what it
    cannot honour)."""
    _common(req, "chat", max_choices)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    default = min(default_max_tokens, limit or default_max_tokens)
    asked = req.max_completion_tokens or req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_tokens = _max_tokens(asked, default, limit, name)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    for m in messages:
        for call in m.get("tool_calls") or []:
            args = call["function"].get("arguments")
            if isinstance(args, str) and args:
                try:
                    json.loads(args)
                except ValueError as exc:
                    raise APIError(
                        400,
                        f"tool call arguments must be a JSON object string, got {args[:80]!r}",
                        param="messages",
                    ) from exc
    constraint, param = _constraint(req)
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    if tools and req.tool_choice != "none" and constraint is not None:
        raise _refuse(param or "tools", f"{param} cannot be combined with tools; send one")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return Prepared(
        kind="chat",
        sampling=_sampling(req, max_tokens, logprobs),
        max_tokens=max_tokens,
        n=req.n or 1,
        messages=messages,
        logprobs=logprobs,
        constraint=constraint,
        constraint_param=param,
        tools=tools,
        tool_choice=req.tool_choice,
        include_stop_str=bool(req.include_stop_str_in_output),
        tokens_as_ids=bool(req.return_tokens_as_token_ids),
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        body=body,
    )


def prepare_completion(
    req: CompletionRequest,
    body: dict[str, Any],
    *,
    limit: int | None,
    max_choices: int,
) -> Prepared:
    """A completion request as a backend generates it."""
    _common(req, "completion", max_choices)
    prompt = req.prompt
    prompts: list[Any]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = list(prompt)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise APIError(400, "prompt is empty; send a text or token ids", param="prompt")
    n = req.n or 1
    if n * len(prompts) > max_choices:
        raise APIError(
            400,
            f"{len(prompts)} prompts x n={n} is more than this server generates for one "
            f"request ({max_choices}); send fewer prompts per request",
            param="prompt",
        )
    default = min(COMPLETION_DEFAULT_MAX_TOKENS, limit or COMPLETION_DEFAULT_MAX_TOKENS)
    max_tokens = _max_tokens(req.max_tokens, default, limit)
    if max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0 only makes sense with echo=true", param="max_tokens")
    constraint, param = _constraint(req)
    return Prepared(
        kind="completion",
        sampling=_sampling(req, max(max_tokens, 1), req.logprobs),
        max_tokens=max_tokens,
        n=n,
        prompts=prompts,
        echo=bool(req.echo),
        logprobs=req.logprobs,
        constraint=constraint,
        constraint_param=param,
        include_stop_str=bool(req.include_stop_str_in_output),
        tokens_as_ids=bool(req.return_tokens_as_token_ids),
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        add_special_tokens=req.add_special_tokens is not False,
        body=body,
    )
