"""vLLM's ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import PlainTextResponse

from .auth import require_key
from .errors import APIError
from .protocol import ERROR_RESPONSES, LoadAdapterRequest, UnloadAdapterRequest
from .state import ServerState, State

router = APIRouter(dependencies=[Depends(require_key)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Done"},
    403: ERROR_RESPONSES[401] | {"description": "Adapter loading is disabled"},
    **ERROR_RESPONSES,
}


def _check_loading(st: ServerState) -> None:
    if not st.config.allow_adapter_loading:
        raise APIError(
            403,
            "loading and unloading adapters over HTTP is disabled on this server "
            "(started with --no-adapter-loading)",
            code="adapter_loading_disabled",
        )


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=_RESPONSES)
async def load_lora_adapter(req: LoadAdapterRequest, st: State) -> PlainTextResponse:
    _check_loading(st)
    return PlainTextResponse(
        await st.backend.load_adapter(req.lora_name, req.lora_path, req.load_inplace)
    )


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=_RESPONSES)
async def unload_lora_adapter(req: UnloadAdapterRequest, st: State) -> PlainTextResponse:
    _check_loading(st)
    return PlainTextResponse(await st.backend.unload_adapter(req.lora_name))
