"""One admitted generation: waiting with timeout and disconnect checks, SSE streaming of its
choices, and settling metrics, admission and the request log exactly once; plus the
request-size guard.

The wire shape of chat and text completions differs; a :class:`Format` (in :mod:`.chat` and
:mod:`.completions`) builds each chunk and the whole answer, and :class:`Job` does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse, StreamingResponse

from .backends import Delta, Final, LogprobEntry, Running, Target
from .errors import APIError, map_exception
from .logs import note
from .params import Prepared

HEADER_PREFIX = "X-LoraRoute-"
ROUTE_HEADERS = [
    f"{HEADER_PREFIX}Adapter",
    f"{HEADER_PREFIX}Adapter-Digest",
    f"{HEADER_PREFIX}Routed",
    f"{HEADER_PREFIX}Route-Confidence",
    f"{HEADER_PREFIX}Replica",
    "Retry-After",
    "X-Request-Id",
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


class Format(Protocol):
    """How one endpoint writes its answer (see :mod:`.chat`, :mod:`.completions`)."""

    id_prefix: str

    def opening(self, job: Job) -> list[dict[str, Any]]: ...

    def delta(self, job: Job, index: int, delta: Delta) -> dict[str, Any] | None: ...

    def closing(
        self, job: Job, index: int, final: Final, text: str, logprobs: list[LogprobEntry]
    ) -> dict[str, Any]: ...

    def whole(self, job: Job, finals: list[Final]) -> dict[str, Any]: ...

    def usage_chunk(self, job: Job, usage: dict[str, int]) -> dict[str, Any]: ...


_FINISHED = {"stop": "stop", "tool_calls": "stop", "length": "length"}


class Job:
    """One admitted generation: waits, streams, and settles metrics, admission and the request
    log exactly once."""

    def __init__(
        self,
        st: Any,
        target: Target,
        running: Running,
        prepared: Prepared,
        fmt: Format,
        t0: float,
        request_id: str,
    ):
        self.st = st
        self.target = target
        self.running = running
        self.prepared = prepared
        self.fmt = fmt
        self.t0 = t0
        self.deadline = t0 + st.config.request_timeout
        self.label = running.adapter_ref or "base"
        self.model = running.adapter_ref or "base"
        self.id = f"{fmt.id_prefix}{request_id}"
        self.created = int(time.time())
        self.closed = False
        self.info = route_info(st, target, running)
        self.streamed: list[str] = []  # each choice's text already sent (SSE)
        # characters of the tokens whose log-probabilities each choice has sent (text_offset)
        self.offsets = [0] * len(running.streams)
        st.jobs.add(self)

    def started(self) -> bool:
        """Whether any choice has its first token (a running request, not a waiting one)."""
        return any(s.timings().tokens for s in self.running.streams)

    def usage(self, finals: list[Final]) -> dict[str, int]:
        """OpenAI's usage: each prompt counted once, every choice's tokens."""
        n = self.prepared.n
        prompt = sum(f.prompt_tokens for i, f in enumerate(finals) if i % n == 0)
        completion = sum(f.completion_tokens for f in finals)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def close(
        self, status: str, finals: list[Final] | None = None, code: str | None = None
    ) -> None:
        if self.closed:
            return
        self.closed = True
        self.st.jobs.discard(self)
        if not self.running.done():
            self.running.cancel()
        now = time.perf_counter()
        seconds = now - self.t0
        m = self.st.metrics
        self.st.admission.release(seconds if status == "ok" else None, self.prepared.choices)
        m.requests.labels(self.label, status).inc()
        if code is not None:
            m.errors.labels(self.label, code).inc()
        if status == "ok":
            m.latency.labels(self.label).observe(seconds)
        usage = self.usage(finals) if finals else None
        if usage is not None:
            m.prompt_tokens.labels(self.label).inc(usage["prompt_tokens"])
            m.completion_tokens.labels(self.label).inc(usage["completion_tokens"])
        self._observe(status, finals, now)
        note(
            model=self.target.requested,
            adapter=self.running.adapter_ref or "base",
            routed=self.target.routed,
            route_reason=self.target.reason,
            route_score=self.target.score,
            route_confidence=self.target.confidence,
            prompt_tokens=usage["prompt_tokens"] if usage else None,
            completion_tokens=usage["completion_tokens"] if usage else None,
            choices=self.prepared.choices,
            finish_reasons=[f.finish_reason for f in finals] if finals else None,
            outcome=status,
            error_code=code,
        )

    def _observe(self, status: str, finals: list[Final] | None, now: float) -> None:
        """vLLM's per-request metrics, one request a choice; time to first token for all."""
        m = self.st.metrics
        labels = m.vllm_labels()
        p = self.prepared
        first_any = None
        for i, stream in enumerate(self.running.streams):
            t = stream.timings()
            final = finals[i] if finals and i < len(finals) else None
            if final is not None and status == "ok":
                reason = _FINISHED.get(final.finish_reason, "abort")
            else:
                reason = "abort"
            m.v_success.labels(*labels, reason).inc()
            m.v_e2e.labels(*labels).observe(now - self.t0)
            m.v_n.labels(*labels).observe(p.n)
            m.v_max_tokens.labels(*labels).observe(p.max_tokens)
            if final is not None:
                m.v_prompt.labels(*labels).inc(final.prompt_tokens if i % p.n == 0 else 0)
                m.v_gen.labels(*labels).inc(final.completion_tokens)
                m.v_prompt_hist.labels(*labels).observe(final.prompt_tokens)
                m.v_gen_hist.labels(*labels).observe(final.completion_tokens)
            if t.scheduled is not None and t.submitted is not None:
                m.v_queue.labels(*labels).observe(max(0.0, t.scheduled - t.submitted))
            if not t.tokens:
                continue
            first = t.tokens[0]
            first_any = first if first_any is None else min(first_any, first)
            m.v_ttft.labels(*labels).observe(max(0.0, first - self.t0))
            for a, b in zip(t.tokens, t.tokens[1:], strict=False):
                m.v_tpot.labels(*labels).observe(b - a)
                m.v_itl.labels(*labels).observe(b - a)
            if t.scheduled is not None:
                m.v_prefill.labels(*labels).observe(max(0.0, first - t.scheduled))
                m.v_inference.labels(*labels).observe(max(0.0, t.tokens[-1] - t.scheduled))
            m.v_decode.labels(*labels).observe(t.tokens[-1] - first)
        if first_any is not None:
            m.ttft.labels(self.label).observe(max(0.0, first_any - self.t0))
        if finals:
            m.v_max_gen.labels(*labels).observe(max(f.completion_tokens for f in finals))

    def _timeout_error(self) -> APIError:
        return APIError(
            504,
            f"generation did not finish within the request timeout "
            f"({self.st.config.request_timeout:g} s); lower max_tokens or raise --request-timeout",
            code="timeout",
        )

    async def _collect(self) -> list[Final]:
        async def one(stream: Any) -> Final:
            async for _ in stream.deltas():
                pass
            return stream.final()

        return list(await asyncio.gather(*(one(s) for s in self.running.streams)))

    async def wait(self, request: Request) -> list[Final]:
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

    def response(self, finals: list[Final], headers: dict[str, str]) -> JSONResponse:
        body = self.fmt.whole(self, finals)
        body["usage"] = self.usage(finals)
        body["loraroute"] = self.info
        return JSONResponse(body, headers=headers)

    @staticmethod
    def _event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data)}\n\n"

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        status, finals, code = "cancelled", None, None
        streams = self.running.streams
        queue: asyncio.Queue[tuple[int, Delta | None, BaseException | None]] = asyncio.Queue()

        async def pump(stream: Any) -> None:
            try:
                async for delta in stream.deltas():
                    await queue.put((stream.index, delta, None))
                await queue.put((stream.index, None, None))
            except Exception as exc:  # noqa: BLE001 - reported in-band below
                await queue.put((stream.index, None, exc))

        tasks = [asyncio.ensure_future(pump(s)) for s in streams]
        try:
            first = True
            for chunk in self.fmt.opening(self):
                if first:
                    chunk["loraroute"], first = self.info, False
                yield self._event(chunk)
            texts = self.streamed = [""] * len(streams)
            done: dict[int, Final] = {}
            while len(done) < len(streams):
                remaining = self.deadline - time.perf_counter()
                if remaining <= 0:
                    raise self._timeout_error()
                try:
                    index, delta, error = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    raise self._timeout_error() from None
                if error is not None:
                    raise error
                if delta is not None:
                    piece = self.fmt.delta(self, index, delta)
                    texts[index] += delta.text
                    if piece is not None:
                        if first:
                            piece["loraroute"], first = self.info, False
                        yield self._event(piece)
                    continue
                stream = streams[index]
                final = done[index] = stream.final()
                whole = final.echo + final.content
                tail = whole[len(texts[index]) :] if whole.startswith(texts[index]) else ""
                rest = (final.logprobs or [])[stream.sent_logprobs :]
                chunk = self.fmt.closing(self, index, final, tail, rest)
                chunk["loraroute"] = self.info
                yield self._event(chunk)
            finals = [done[i] for i in range(len(streams))]
            if include_usage:
                yield self._event(self.fmt.usage_chunk(self, self.usage(finals)))
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
            for task in tasks:
                task.cancel()
            self.close(status, finals, code)


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
