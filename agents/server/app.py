"""The OpenAI-compatible server: routes, batches and reports per adapter.

``POST /v1/chat/completions`` and ``POST /v1/completions`` take ``model: "auto"`` (routed by
content), ``"base"`` or an adapter reference (``legal``, ``legal:prod``, ``legal@3``); the
chosen adapter version, its digest and the route confidence come back in ``X-LoraRoute-*``
headers and in the response's ``loraroute`` field. Every OpenAI and vLLM sampling parameter is
honoured or refused with a 400 naming it (:mod:`.params`). ``GET /v1/models`` lists base,
adapters and aliases; vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` work
unchanged. Requests share the engine's continuous batch; a bounded queue answers 429 with
``Retry-After``; each request has a timeout; a client that disconnects cancels its generation.
Every request has an id (``X-Request-Id``) and one line in the request log (:mod:`.logs`).
``/metrics`` is Prometheus with vLLM's metric names beside ours, ``/health`` and ``/ready``
are for probes. One module a resource: :mod:`.chat`, :mod:`.completions`, :mod:`.models`,
:mod:`.adapters`, :mod:`.probes`; the protocol models are in :mod:`.protocol`.

Example::

    >>> engine = Engine("smollm2-135m-instruct")  # doctest: +SKIP
    >>> app = create_app(LocalBackend(engine), router=Router.open(engine.registry))  # doctest: +SKIP
    >>> with BackgroundServer(app) as srv:  # doctest: +SKIP
    ...     OpenAI(base_url=srv.url + "/v1", api_key="-").chat.completions.create(
    ...         model="auto", messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from . import adapters, chat, completions, models, probes
from .auth import RefuseQuerySecrets
from .backends import Backend
from .config import ServerConfig
from .errors import APIError, map_exception, validation_message
from .logs import RequestContext
from .params import REFUSED
from .state import ServerState
from .streaming import ROUTE_HEADERS, BodyLimit


def create_app(
    backend: Backend,
    *,
    config: ServerConfig | None = None,
    router: Any = None,
    open_router: bool = True,
) -> FastAPI:
    """The server app over ``backend`` (:class:`LocalBackend` or ``proxy.ProxyBackend``).

    ``router`` routes ``model="auto"``; without one and with ``open_router``, the server opens
    ``Router.open(backend.registry)`` at startup (``/ready`` waits for it).
    """
    config = config or ServerConfig()
    st = ServerState(config, backend, router, open_router)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.ensure_future(st.load_router())
        await st.start_monitoring()
        yield
        task.cancel()
        await st.stop_monitoring()
        await backend.aclose()

    app = FastAPI(
        title="loraroute",
        version="0.1.0",
        description="OpenAI-compatible server: many LoRA adapters on one base model, "
        'routed by content with model="auto".',
        lifespan=lifespan,
    )
    app.state.lr = st
    _add_error_handlers(app)
    for module in (chat, completions, models, adapters, probes):
        app.include_router(module.router)
    app.add_middleware(RefuseQuerySecrets)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_credentials=config.cors_allow_credentials,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=ROUTE_HEADERS,
        )
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.add_middleware(RequestContext)  # outermost: every answer has an id and a log line
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-shaped JSON body (:class:`APIError`)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _scrubbed(request, exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(list(exc.errors()), hints=REFUSED)
        return APIError(400, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail)
        if status == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif status == 400 and isinstance(exc.__cause__, StarletteHTTPException):
            status, message = exc.__cause__.status_code, str(exc.__cause__.detail)
        return APIError(
            status, message, code=f"http_{status}", headers=dict(exc.headers or {})
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _scrubbed(request, map_exception(exc)).response()


def _scrubbed(request: Request, exc: APIError) -> APIError:
    """``exc`` with the server's private strings (registry URL, its folders, the home folder)
    and any secret taken out of its message: nothing of the server's layout reaches a client."""
    exc.message = request.app.state.lr.scrub(exc.message)
    return exc
