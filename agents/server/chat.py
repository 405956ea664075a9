"""``POST /v1/chat/completions``: routed, batched, streamed or whole."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from .auth import require_key
from .backends import Prepared, Running
from .config import ServerConfig
from .errors import APIError, map_exception
from .protocol import ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest
from .state import State
from .streaming import Job, SSEResponse, route_headers, route_info

router = APIRouter(dependencies=[Depends(require_key)])


# Below this, sampling is greedy for all practical purposes, and logits / temperature would
# overflow to inf (NaN probabilities) for temperatures like 1e-80.
MIN_TEMPERATURE = 1e-3


def _temperature(value: float | None) -> float:
    if value is None:
        return 1.0
    return 0.0 if value < MIN_TEMPERATURE else value


def _prepare(
    req: ChatCompletionRequest, body: dict[str, Any], cfg: ServerConfig, max_context: int | None
) -> Prepared:
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(
                400, f"{name} is not supported by this server; leave it 0 or unset", param=name
            )
    limit = cfg.max_tokens_limit or max_context
    default = min(cfg.default_max_tokens, limit or cfg.default_max_tokens)
    max_tokens = req.max_completion_tokens or req.max_tokens or default
    if limit is not None and max_tokens > limit:
        raise APIError(
            400,
            f"max_tokens is too large: {max_tokens}; this server allows at most {limit}",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 16:
        raise APIError(400, f"stop has {len(stop)} sequences; send at most 16", param="stop")
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
    return Prepared(
        messages=messages,
        max_tokens=max_tokens,
        temperature=_temperature(req.temperature),
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop,
        seed=None if req.seed is None else req.seed % (2**63),
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=req.tool_choice,
        response_format=req.response_format,
        body=body,
    )


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletion,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "The answer, or server-sent chunks when stream is true",
        },
        **ERROR_RESPONSES,
    },
)
async def chat_completions(req: ChatCompletionRequest, request: Request, st: State) -> Response:
    t0 = time.perf_counter()
    backend = st.backend
    try:
        st.admission.admit()
    except APIError as full:
        st.metrics.requests.labels("-", "rejected").inc()
        st.metrics.errors.labels("-", full.code or "429").inc()
        raise
    running: Running | None = None
    try:
        body = await request.json()
        prepared = _prepare(req, body, st.config, backend.max_context)
        target = await st.target(req.model, prepared.messages)
        running = await backend.start(target, prepared)
    except BaseException as exc:
        st.admission.release(None)
        err = map_exception(exc) if isinstance(exc, Exception) else None
        st.metrics.requests.labels("-", "error" if err is not None else "cancelled").inc()
        if err is not None:
            st.metrics.errors.labels("-", err.code or str(err.status)).inc()
            raise err from exc
        raise
    job = Job(st, target, running, t0)
    headers = route_headers(target, running)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(job, include_usage, headers)
    try:
        final = await job.wait(request)
    except BaseException as exc:
        err = map_exception(exc) if isinstance(exc, Exception) else None
        if err is None or err.status == 499:
            job.close("cancelled")
        else:
            job.close("timeout" if err.status == 504 else "error", code=err.code)
        if err is not None:
            raise err from exc
        raise
    job.close("ok", final)
    message: dict[str, Any] = {"role": "assistant", "content": final.content}
    if final.tool_calls:
        message["tool_calls"] = final.tool_calls
        message["content"] = final.content or None
    payload = {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": job.model,
        "system_fingerprint": backend.base_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": final.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": final.prompt_tokens,
            "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens,
        },
        "loraroute": route_info(st, target, running),
    }
    # again after the answer: a backend that retried elsewhere reports where it finished
    return JSONResponse(payload, headers=route_headers(target, running))
