"""One admitted generation: waiting with timeout and disconnect checks, SSE streaming, and
settling metrics and admission exactly once; plus the request-size guard."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse, StreamingResponse

from .backends import Final, Running, Target
from .errors import APIError, map_exception

HEADER_PREFIX = "X-LoraRoute-"
ROUTE_HEADERS = [
    f"{HEADER_PREFIX}Adapter",
    f"{HEADER_PREFIX}Adapter-Digest",
    f"{HEADER_PREFIX}Routed",
    f"{HEADER_PREFIX}Route-Confidence",
    f"{HEADER_PREFIX}Replica",
    "Retry-After",
]


def route_info(st: Any, target: Target, running: Running | None) -> dict[str, Any]:
    # where it ran, on a backend with several engines (Ray: the replica, adapter already held)
    placement = getattr(running, "placement", None)
    return {
        "requested_model": target.requested,
        "adapter": running.adapter_ref if running else target.adapter,
        "adapter_digest": running.adapter_digest if running else None,
        "routed": target.routed,
        "route_reason": target.reason,
        "route_score": target.score,
        "route_confidence": target.confidence,
        "alternatives": target.alternatives,
        "base_model": st.backend.base_model,
        **({"placement": placement} if placement else {}),
    }


def route_headers(target: Target, running: Running) -> dict[str, str]:
    h = {
        f"{HEADER_PREFIX}Adapter": running.adapter_ref or "base",
        f"{HEADER_PREFIX}Routed": "true" if target.routed else "false",
    }
    if running.adapter_digest:
        h[f"{HEADER_PREFIX}Adapter-Digest"] = running.adapter_digest
    if target.confidence is not None:
        h[f"{HEADER_PREFIX}Route-Confidence"] = f"{target.confidence:.4f}"
    placement = getattr(running, "placement", None)
    if placement and placement.get("replica"):
        h[f"{HEADER_PREFIX}Replica"] = str(placement["replica"])
    return h


class Job:
    """One admitted generation: waits, streams, and settles metrics and admission exactly once."""

    def __init__(self, st: Any, target: Target, running: Running, t0: float):
        self.st = st
        self.target = target
        self.running = running
        self.t0 = t0
        self.deadline = t0 + st.config.request_timeout
        self.label = running.adapter_ref or "base"
        self.model = running.adapter_ref or "base"
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.closed = False

    def close(self, status: str, final: Final | None = None, code: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.running.done():
            self.running.cancel()
        seconds = time.perf_counter() - self.t0
        m = self.st.metrics
        self.st.admission.release(seconds if status == "ok" else None)
        m.requests.labels(self.label, status).inc()
        if code is not None:
            m.errors.labels(self.label, code).inc()
        if status == "ok":
            m.latency.labels(self.label).observe(seconds)
        if final is not None:
            m.prompt_tokens.labels(self.label).inc(final.prompt_tokens)
            m.completion_tokens.labels(self.label).inc(final.completion_tokens)

    def _timeout_error(self) -> APIError:
        return APIError(
            504,
            f"generation did not finish within the request timeout "
            f"({self.st.config.request_timeout:g} s); lower max_tokens or raise --request-timeout",
            code="timeout",
        )

    async def _collect(self) -> Final:
        async for _ in self.running.deltas():
            pass
        return self.running.final()

    async def wait(self, request: Request) -> Final:
        task = asyncio.ensure_future(self._collect())
        try:
            while True:
                remaining = self.deadline - time.perf_counter()
                if remaining <= 0:
                    raise self._timeout_error()
                done, _ = await asyncio.wait({task}, timeout=min(0.25, remaining))
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise APIError(499, "the client disconnected", code="client_disconnected")
        finally:
            if not task.done():
                task.cancel()
                self.running.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.st.backend.base_fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        data.update(extra)
        return f"data: {json.dumps(data)}\n\n"

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        status, final, code = "cancelled", None, None
        info = route_info(self.st, self.target, self.running)
        try:
            yield self.chunk({"role": "assistant", "content": ""}, loraroute=info)
            streamed: list[str] = []
            deltas = self.running.deltas().__aiter__()
            while True:
                remaining = self.deadline - time.perf_counter()
                if remaining <= 0:
                    raise self._timeout_error()
                try:
                    delta = await asyncio.wait_for(deltas.__anext__(), remaining)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise self._timeout_error() from None
                if not streamed:
                    self.st.metrics.ttft.labels(self.label).observe(time.perf_counter() - self.t0)
                streamed.append(delta)
                yield self.chunk({"content": delta})
            final = self.running.final()
            text = "".join(streamed)
            tail: dict[str, Any] = {}
            if final.content.startswith(text) and len(final.content) > len(text):
                tail["content"] = final.content[len(text) :]
            if final.tool_calls:
                tail["tool_calls"] = [dict(c, index=i) for i, c in enumerate(final.tool_calls)]
            yield self.chunk(tail, finish=final.finish_reason, loraroute=info)
            if include_usage:
                usage = {
                    "prompt_tokens": final.prompt_tokens,
                    "completion_tokens": final.completion_tokens,
                    "total_tokens": final.prompt_tokens + final.completion_tokens,
                }
                data = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
            status = "ok"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream has started: report in-band
            err = map_exception(exc)
            status = "timeout" if err.status == 504 else "error"
            code = err.code or str(err.status)
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.close(status, final, code)


class SSEResponse(StreamingResponse):
    """Streams a job; however the stream ends (disconnect included), the job is settled."""

    def __init__(self, job: Job, include_usage: bool, headers: dict[str, str]):
        self.job = job
        super().__init__(
            job.sse(include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.job.close("cancelled")


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413 before reading them (Content-Length) or
    while reading them (chunked)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(int(length)).__call__(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._message(seen))
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return (
            f"the request body has {size} bytes, more than the server's limit of {self.limit}; "
            f"shorten the conversation or raise --max-request-bytes"
        )

    def _too_large(self, size: int) -> JSONResponse:
        return APIError(413, self._message(size), code="request_too_large").response()
