"""The OpenAI-compatible chat server: routes, batches and reports per adapter.

``POST /v1/chat/completions`` takes ``model: "auto"`` (routed by content), ``"base"`` or an
adapter reference (``legal``, ``legal:prod``, ``legal@3``); the chosen adapter version, its
digest and the route confidence come back in ``X-LoraRoute-*`` headers and in the response's
``loraroute`` field. ``GET /v1/models`` lists base, adapters and aliases; vLLM's
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` work unchanged. Requests share the
engine's continuous batch; a bounded queue answers 429 with ``Retry-After``; each request has a
timeout; a client that disconnects cancels its generation. ``/metrics`` is Prometheus,
``/health`` and ``/ready`` are for probes.

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
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ._server_backend import Backend, LocalBackend, Prepared, Running, Target, _run
from ._server_errors import APIError, map_exception, validation_message
from ._server_models import list_models
from ._server_schema import (
    ERROR_RESPONSES,
    ChatCompletion,
    ChatCompletionRequest,
    Health,
    LoadAdapterRequest,
    ModelCard,
    ModelList,
    UnloadAdapterRequest,
)
from ._server_stream import (
    ROUTE_HEADERS,
    BodyLimit,
    Job,
    SSEResponse,
    route_headers,
    route_info,
)
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerConfig(BaseModel):
    """Settings of ``adapters serve`` (each has a CLI option; most an environment variable).

    API keys are off by default on loopback and required when ``host`` is anything else,
    unless ``insecure_no_auth`` says otherwise.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)
    insecure_no_auth: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    max_queue: int = Field(default=64, ge=0, description="Admitted requests beyond the batch")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests generating at once (default: the batch size)"
    )
    request_timeout: float = Field(default=300.0, gt=0)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    default_max_tokens: int = Field(default=512, ge=1)
    max_tokens_limit: int | None = Field(
        default=None, ge=1, description="Largest max_tokens accepted (default: the context size)"
    )
    allow_adapter_loading: bool = True

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        self.api_keys = [k.strip() for k in self.api_keys if k and k.strip()]
        if not self.api_keys and not self.insecure_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"binding {self.host!r} exposes the server beyond this machine, so API keys are "
                f"required: pass --api-key KEY (or LORAROUTE_API_KEYS=k1,k2), bind 127.0.0.1, "
                f"or accept the risk with --insecure-no-auth"
            )
        return self


class _Admission:
    """The bounded queue: at most ``capacity`` requests admitted (running + waiting)."""

    def __init__(self, concurrency: int, max_queue: int):
        self.concurrency = concurrency
        self.capacity = concurrency + max_queue
        self.inflight = 0
        self.latency_ewma = 1.0  # seconds per request, for Retry-After

    def admit(self) -> None:
        if self.inflight >= self.capacity:
            waiting = max(1, self.inflight - self.concurrency)
            retry = min(60, max(1, math.ceil(self.latency_ewma * waiting / self.concurrency)))
            raise APIError(
                429,
                f"the server is at capacity ({self.inflight} requests admitted, queue limit "
                f"{self.capacity}); retry after {retry} s",
                code="queue_full",
                headers={"Retry-After": str(retry)},
            )
        self.inflight += 1

    def release(self, seconds: float | None) -> None:
        self.inflight -= 1
        if seconds is not None:
            self.latency_ewma = 0.9 * self.latency_ewma + 0.1 * seconds


class _State:
    def __init__(self, config: ServerConfig, backend: Backend, router: Any, open_router: bool):
        self.config = config
        self.backend = backend
        self.router = router
        self.open_router = open_router and router is None
        self.router_error: str | None = None
        self.router_ready = router is not None or not self.open_router
        self.started = int(time.time())
        self.admission = _Admission(config.max_concurrency or backend.concurrency, config.max_queue)
        self.metrics = ServerMetrics(self.stats)

    def stats(self) -> dict[str, Any]:
        s = dict(self.backend.stats())
        a = self.admission
        running = s.get("running")
        if running is None:
            running = min(a.inflight, a.concurrency)
        s.update(
            inflight=a.inflight,
            capacity=a.capacity,
            queue_depth=max(0, a.inflight - running),
        )
        return s

    async def load_router(self) -> None:
        if not self.open_router:
            return
        registry = self.backend.registry
        if registry is None:
            self.router_error = "no registry is configured, so model=auto answers with base"
            self.router_ready = True
            return
        try:
            from loraroute.router import Router

            self.router = await _run(Router.open, registry)
        except Exception as exc:  # noqa: BLE001 - reported by /ready and in every auto answer
            self.router_error = f"the router could not be opened: {type(exc).__name__}: {exc}"
            logger.warning("%s; model=auto answers with the base model", self.router_error)
        self.router_ready = True

    async def target(self, model: str, messages: list[dict[str, Any]]) -> Target:
        low = model.strip().lower()
        if low in ("base", "none") or low in self.backend.base_names():
            return Target(model, None)
        if low != "auto":
            return Target(model, model.strip())
        if self.router is None:
            return Target(model, None, reason=self.router_error or "no_router")
        d = await _run(self.router.route, messages)
        adapter = d.ref or d.adapter
        self.metrics.route_confidence.labels(adapter or "base").observe(float(d.confidence))
        return Target(
            model,
            adapter,
            routed=True,
            reason=d.reason or None,
            score=float(d.score),
            confidence=float(d.confidence),
            alternatives=[[n, float(s)] for n, s in (d.alternatives or [])],
        )


def _route_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        role = {"function": "tool", "developer": "system"}.get(m["role"], m["role"])
        out.append({"role": role, "content": m.get("content") or ""})
    return out


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
    st = _State(config, backend, router, open_router)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.ensure_future(st.load_router())
        yield
        task.cancel()
        await backend.aclose()

    app = FastAPI(
        title="loraroute",
        version="0.1.0",
        description="OpenAI-compatible chat server: many LoRA adapters on one base model, "
        'routed by content with model="auto".',
        lifespan=lifespan,
    )
    app.state.lr = st

    async def require_key(request: Request) -> None:
        if not config.api_keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = token.strip()
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in config.api_keys):
            raise APIError(
                401,
                "the API key is not valid for this server; check the key you sent",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(require_key)]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(list(exc.errors()))
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
        return map_exception(exc).response()

    @app.post(
        "/v1/chat/completions",
        dependencies=auth,
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
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            st.admission.admit()
        except APIError as full:
            st.metrics.requests.labels("-", "rejected").inc()
            st.metrics.errors.labels("-", full.code or "429").inc()
            raise
        running: Running | None = None
        try:
            body = await request.json()
            prepared = _prepare(req, body, config, backend.max_context)
            target = await st.target(req.model, _route_messages(prepared.messages))
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
        return JSONResponse(payload, headers=headers)

    @app.get("/v1/models", dependencies=auth, response_model=ModelList, responses=ERROR_RESPONSES)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": await list_models(st)}

    @app.get(
        "/v1/models/{model_id}",
        dependencies=auth,
        response_model=ModelCard,
        responses=ERROR_RESPONSES,
    )
    async def model(model_id: str) -> dict[str, Any]:
        for card in await list_models(st):
            if card["id"] == model_id:
                return card
        raise APIError(
            404,
            f"the model {model_id!r} does not exist; GET /v1/models lists base, auto, adapters "
            f"and aliases",
            code="model_not_found",
            param="model",
        )

    def _check_loading() -> None:
        if not config.allow_adapter_loading:
            raise APIError(
                403,
                "loading and unloading adapters over HTTP is disabled on this server "
                "(started with --no-adapter-loading)",
                code="adapter_loading_disabled",
            )

    admin_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Done"},
        403: ERROR_RESPONSES[401] | {"description": "Adapter loading is disabled"},
        **ERROR_RESPONSES,
    }

    @app.post(
        "/v1/load_lora_adapter",
        dependencies=auth,
        response_class=PlainTextResponse,
        responses=admin_responses,
    )
    async def load_lora_adapter(req: LoadAdapterRequest) -> PlainTextResponse:
        _check_loading()
        return PlainTextResponse(
            await backend.load_adapter(req.lora_name, req.lora_path, req.load_inplace)
        )

    @app.post(
        "/v1/unload_lora_adapter",
        dependencies=auth,
        response_class=PlainTextResponse,
        responses=admin_responses,
    )
    async def unload_lora_adapter(req: UnloadAdapterRequest) -> PlainTextResponse:
        _check_loading()
        return PlainTextResponse(await backend.unload_adapter(req.lora_name))

    @app.get(
        "/metrics",
        dependencies=auth,
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            401: ERROR_RESPONSES[401],
        },
    )
    async def metrics() -> Response:
        data, ctype = st.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "detail": {"backend": backend.kind}}

    @app.get(
        "/ready",
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready yet"}},
    )
    async def ready() -> JSONResponse:
        ok, detail = await backend.ready()
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
    return app


class BackgroundServer:
    """Serve ``app`` with uvicorn on a daemon thread (tests, benchmarks, notebooks).

    Example::

        >>> with BackgroundServer(app) as srv:  # doctest: +SKIP
        ...     httpx.get(srv.url + "/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_kwargs: Any):
        import uvicorn

        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        uvicorn_kwargs.setdefault("log_level", "warning")
        uvicorn_kwargs.setdefault("lifespan", "on")
        self.server = uvicorn.Server(uvicorn.Config(app, **uvicorn_kwargs))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(app: Any, config: ServerConfig, *, log_level: str = "info") -> None:
    """Run ``app`` in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level)


def api_keys_from_env() -> list[str]:
    """``LORAROUTE_API_KEYS``: comma-separated keys."""
    return [k for k in os.environ.get("LORAROUTE_API_KEYS", "").split(",") if k.strip()]


__all__ = [
    "BackgroundServer",
    "LocalBackend",
    "ServerConfig",
    "api_keys_from_env",
    "create_app",
    "is_loopback",
    "serve",
]
