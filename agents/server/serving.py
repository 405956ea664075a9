"""What every generation endpoint does: validate, admit, route, start, then answer whole or
streamed (the endpoint modules give the request's kind and the wire :class:`.streaming.Format`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from starlette.responses import Response

from .backends import Running
from .errors import APIError, map_exception
from .logs import current_request_id, note, set_request_id
from .params import Prepared, prepare_chat, prepare_completion
from .protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from .state import ServerState
from .streaming import Format, Job, SSEResponse, route_headers


def _prepare(st: ServerState, req: GenerationRequest, body: dict[str, Any]) -> Prepared:
    backend, cfg = st.backend, st.config
    limit = cfg.max_tokens_limit or backend.max_context
    if isinstance(req, ChatCompletionRequest):
        return prepare_chat(
            req,
            body,
            default_max_tokens=cfg.default_max_tokens,
            limit=limit,
            max_choices=st.max_choices,
        )
    if isinstance(req, CompletionRequest):
        return prepare_completion(req, body, limit=limit, max_choices=st.max_choices)
    raise TypeError(f"no generation endpoint takes {type(req).__name__}")


async def _route_messages(st: ServerState, req: GenerationRequest, p: Prepared) -> list[dict]:
    """What the router reads: the conversation, or a completion's prompt as one user turn."""
    if p.kind == "chat":
        return p.messages
    if req.model.strip().lower() == "auto" and len(p.prompts) > 1:
        raise APIError(
            400,
            f'model="auto" routes one prompt at a time, got {len(p.prompts)}; send them one by '
            f"one or name an adapter",
            param="prompt",
        )
    text = await st.backend.prompt_text(p.prompts[0])
    return [{"role": "user", "content": text}]


async def generate(
    request: Request, st: ServerState, req: GenerationRequest, fmt: Format
) -> Response:
    """Answer one chat or completion request (whole, or as server-sent events)."""
    t0 = time.perf_counter()
    if req.request_id is not None:
        set_request_id(req.request_id)
    user = getattr(req, "safety_identifier", None) or req.user
    note(model=req.model, user=user)
    metrics = st.metrics
    try:
        prepared = _prepare(st, req, await request.json())
    except APIError as invalid:
        metrics.requests.labels("-", "error").inc()
        metrics.errors.labels("-", invalid.code or str(invalid.status)).inc()
        raise
    try:
        st.admission.admit(prepared.choices)
    except APIError as full:
        metrics.requests.labels("-", "rejected").inc()
        metrics.errors.labels("-", full.code or "429").inc()
        raise
    running: Running | None = None
    try:
        messages = await _route_messages(st, req, prepared)
        target = await st.target(req.model, messages)
        running = await st.backend.start(target, prepared)
    except BaseException as exc:
        st.admission.release(None, prepared.choices)
        failed = map_exception(exc) if isinstance(exc, Exception) else None
        metrics.requests.labels("-", "error" if failed is not None else "cancelled").inc()
        if failed is not None:
            metrics.errors.labels("-", failed.code or str(failed.status)).inc()
            raise failed from exc
        raise
    job = Job(st, target, running, prepared, fmt, t0, current_request_id() or "-")
    headers = route_headers(target, running)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return SSEResponse(job, include_usage, headers)
    try:
        finals = await job.wait(request)
    except BaseException as exc:
        stopped = map_exception(exc) if isinstance(exc, Exception) else None
        if stopped is None or stopped.status == 499:
            job.close("cancelled")
        else:
            job.close("timeout" if stopped.status == 504 else "error", code=stopped.code)
        if stopped is not None:
            raise stopped from exc
        raise
    job.close("ok", finals)
    # again after the answer: a backend that retried elsewhere reports where it finished
    return job.response(finals, route_headers(target, running))
