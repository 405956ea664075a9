"""What operators poll: ``/metrics`` (Prometheus), ``/health`` and ``/ready``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .auth import require_key
from .protocol import ERROR_RESPONSES, Health
from .state import State

router = APIRouter()


@router.get(
    "/metrics",
    dependencies=[Depends(require_key)],
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: ERROR_RESPONSES[401],
    },
)
async def metrics(st: State) -> Response:
    data, ctype = st.metrics.render()
    return Response(data, media_type=ctype)


@router.get("/health", response_model=Health)
async def health(st: State) -> dict[str, Any]:
    return {"status": "ok", "detail": {"backend": st.backend.kind}}


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready yet"}},
)
async def ready(st: State) -> JSONResponse:
    ok, detail = await st.backend.ready()
    detail["router"] = (
        "ready"
        if st.router is not None
        else ("loading" if not st.router_ready else (st.router_error or "none"))
    )
    ok = ok and st.router_ready
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "detail": detail},
        status_code=200 if ok else 503,
    )
