"""``POST /v1/chat/completions``: routed, batched, streamed or whole; ``n`` choices sampled in
one batch; log-probabilities as OpenAI's ``logprobs.content``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .auth import require_key
from .backends import Delta, Final, LogprobEntry
from .protocol import ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest
from .serving import generate
from .state import State
from .streaming import Job

router = APIRouter(dependencies=[Depends(require_key)])


def chat_logprobs(entries: list[LogprobEntry] | None) -> dict[str, Any] | None:
    """OpenAI's ``choices[].logprobs`` of a chat answer."""
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": b} for t, v, b in (e.top or [])
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


class ChatFormat:
    """Chat's wire shape: ``chat.completion`` and ``chat.completion.chunk`` objects."""

    id_prefix = "chatcmpl-"

    def _chunk(self, job: Job, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": job.st.backend.base_fingerprint,
            "choices": choices,
        }

    def opening(self, job: Job) -> list[dict[str, Any]]:
        return [
            self._chunk(
                job,
                [
                    {
                        "index": s.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            )
            for s in job.running.streams
        ]

    def delta(self, job: Job, index: int, delta: Delta) -> dict[str, Any] | None:
        want = job.prepared.logprobs is not None
        if not delta.text and not (want and delta.logprobs):
            return None
        choice = {
            "index": index,
            "delta": {"content": delta.text},
            "logprobs": chat_logprobs(delta.logprobs) if want else None,
            "finish_reason": None,
        }
        return self._chunk(job, [choice])

    def closing(
        self, job: Job, index: int, final: Final, text: str, logprobs: list[LogprobEntry]
    ) -> dict[str, Any]:
        tail: dict[str, Any] = {}
        if text:
            tail["content"] = text
        if final.tool_calls:
            tail["tool_calls"] = [dict(c, index=i) for i, c in enumerate(final.tool_calls)]
        want = job.prepared.logprobs is not None
        choice = {
            "index": index,
            "delta": tail,
            "logprobs": chat_logprobs(logprobs) if want else None,
            "finish_reason": final.finish_reason,
            "stop_reason": final.stop_reason,
        }
        return self._chunk(job, [choice])

    def whole(self, job: Job, finals: list[Final]) -> dict[str, Any]:
        choices = []
        for i, final in enumerate(finals):
            message: dict[str, Any] = {"role": "assistant", "content": final.content}
            if final.tool_calls:
                message["tool_calls"] = final.tool_calls
                message["content"] = final.content or None
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "finish_reason": final.finish_reason,
                    "logprobs": chat_logprobs(final.logprobs),
                    "stop_reason": final.stop_reason,
                }
            )
        return {
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": job.st.backend.base_fingerprint,
            "choices": choices,
        }

    def usage_chunk(self, job: Job, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._chunk(job, []), "usage": usage}


FORMAT = ChatFormat()


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
    return await generate(request, st, req, FORMAT)
