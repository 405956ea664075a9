"""``POST /v1/completions``: text completion of one prompt or several (text or token ids),
with ``echo``, ``logprobs`` (OpenAI's parallel lists, as lm-evaluation-harness reads them),
``n`` choices per prompt sampled in one batch, streamed or whole."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .auth import require_key
from .backends import Delta, Final, LogprobEntry
from .protocol import ERROR_RESPONSES, Completion, CompletionRequest
from .serving import generate
from .state import State
from .streaming import Job

router = APIRouter(dependencies=[Depends(require_key)])


def completion_logprobs(entries: list[LogprobEntry], offset: int = 0) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` of a text completion: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (the chosen token included, as OpenAI and vLLM do) and ``text_offset``
    (from ``offset``, the characters already sent)."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for e in entries:
        tokens.append(e.token)
        values.append(e.logprob)
        if e.top is None:
            tops.append(None)
        else:
            top: dict[str, float] = {}
            for t, v, _ in e.top:  # best first: two tokens with one text keep the better
                top.setdefault(t, v)
            if e.logprob is not None:
                top.setdefault(e.token, e.logprob)
            tops.append(top)
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


class CompletionFormat:
    """The completions wire shape: ``text_completion`` objects, whole or as chunks."""

    id_prefix = "cmpl-"

    def _chunk(self, job: Job, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": job.st.backend.base_fingerprint,
            "choices": [choice],
        }

    def _logprobs(self, job: Job, index: int, entries: list[LogprobEntry]) -> dict | None:
        if job.prepared.logprobs is None:
            return None
        start = job.offsets[index]
        job.offsets[index] += sum(len(e.token) for e in entries)
        return completion_logprobs(entries, start)

    def opening(self, job: Job) -> list[dict[str, Any]]:
        return []

    def delta(self, job: Job, index: int, delta: Delta) -> dict[str, Any] | None:
        if not delta.text and not delta.logprobs:
            return None
        choice = {
            "index": index,
            "text": delta.text,
            "logprobs": self._logprobs(job, index, delta.logprobs),
            "finish_reason": None,
        }
        return self._chunk(job, choice)

    def closing(
        self, job: Job, index: int, final: Final, text: str, logprobs: list[LogprobEntry]
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "text": text,
            "logprobs": self._logprobs(job, index, logprobs),
            "finish_reason": final.finish_reason,
            "stop_reason": final.stop_reason,
        }
        return self._chunk(job, choice)

    def whole(self, job: Job, finals: list[Final]) -> dict[str, Any]:
        choices = []
        for i, final in enumerate(finals):
            logprobs = None
            if job.prepared.logprobs is not None:
                logprobs = completion_logprobs((final.echo_logprobs or []) + (final.logprobs or []))
            choices.append(
                {
                    "index": i,
                    "text": final.echo + final.content,
                    "logprobs": logprobs,
                    "finish_reason": final.finish_reason,
                    "stop_reason": final.stop_reason,
                }
            )
        return {
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": job.model,
            "system_fingerprint": job.st.backend.base_fingerprint,
            "choices": choices,
        }

    def usage_chunk(self, job: Job, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": [],
            "usage": usage,
        }


FORMAT = CompletionFormat()


@router.post(
    "/v1/completions",
    response_model=None,
    responses={
        200: {
            "model": Completion,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "The completion, or server-sent chunks when stream is true",
        },
        **ERROR_RESPONSES,
    },
)
async def completions(req: CompletionRequest, request: Request, st: State) -> Response:
    return await generate(request, st, req, FORMAT)
