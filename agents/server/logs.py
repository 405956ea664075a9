"""Request ids and the request log: one line per request, as text or JSON.

:class:`RequestContext` (ASGI middleware) gives every request an id: the client's
``X-Request-Id`` when it is a sane one (1-128 of ``A-Za-z0-9._:/+=-``), else a new one; a
generation request's body may name its own (vLLM's ``request_id``). The id comes back in the
``X-Request-Id`` header, names the completion (``chatcmpl-<id>``, ``cmpl-<id>``), reaches an
external engine, and is on every log record written while the request runs (through
:class:`RequestIdFilter`). When the response ends, one record goes to the
``loraroute.agents.server.requests`` logger with the request's fields (``request`` on the
record): id, method, path, HTTP status, latency, and for generations the model asked, the
adapter chosen, the route score, tokens in and out, outcome and error code. Headers and bodies
are never logged, so API keys and tokens never reach a log.

The library attaches no handler; :func:`configure_logging` (the CLI's) does, with
:class:`JsonFormatter` for ``adapters serve --log-json``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_LOGGER = "loraroute.agents.server.requests"
_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes: logged at DEBUG

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "loraroute_request_id", default=None
)
_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "loraroute_request_fields", default=None
)

logger = logging.getLogger(REQUEST_LOGGER)


def current_request_id() -> str | None:
    """The id of the request being served in this context (``None`` outside one)."""
    return _request_id.get()


def valid_request_id(value: str | None) -> bool:
    return value is not None and _ID.fullmatch(value) is not None


def set_request_id(value: str) -> None:
    """Rename the current request (a body's ``request_id``); the response header follows."""
    _request_id.set(value)
    fields = _fields.get()
    if fields is not None:
        fields["request_id"] = value


def note(**fields: Any) -> None:
    """Add fields to the current request's log line."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


class RequestContext:
    """ASGI middleware: the request id, the ``X-Request-Id`` header, the request log line."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if valid_request_id(sent) else uuid.uuid4().hex
        fields: dict[str, Any] = {"request_id": rid}
        id_token = _request_id.set(rid)
        fields_token = _fields.set(fields)
        t0 = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                fields["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", fields["request_id"].encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields.setdefault("status", 500)
            fields["method"] = scope.get("method")
            fields["path"] = scope.get("path")
            fields["latency_s"] = round(time.perf_counter() - t0, 6)
            level = logging.DEBUG if scope.get("path") in _QUIET_PATHS else logging.INFO
            logger.log(
                level,
                "%s %s %s %.3fs",
                fields["method"],
                fields["path"],
                fields["status"],
                fields["latency_s"],
                extra={"request": dict(fields)},
            )
            _fields.reset(fields_token)
            _request_id.reset(id_token)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` (the current request's, or ``-``) on every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``LEVEL logger [request id]: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        line = super().format(record)
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            skip = {"request_id", "method", "path", "status", "latency_s"}
            extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in skip)
            if extra:
                line += " " + extra
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``message``, ``request_id``, the
    request log's fields at the top level, and ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """The root handler of ``adapters serve``: text or JSON lines on stderr, request ids on
    every record (uvicorn's loggers propagate to it)."""
    from loraroute.redact import RedactingFilter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())  # no key or password in a line, tracebacks included
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestContext",
    "RequestIdFilter",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
    "note",
    "set_request_id",
]
