"""HTTP errors of the server in OpenAI's shape, and the mapping from our domain errors."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from starlette.responses import JSONResponse

from loraroute.errors import InvalidMessagesError
from loraroute.redact import redact_text

from ..errors import (
    ContextLengthError,
    EmptyConversationError,
    EngineClosedError,
    IncompatibleAdapterError,
    PoolFullError,
    ToolSchemaError,
    UnknownAdapterError,
)

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answer: HTTP status, OpenAI error body, optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def map_exception(exc: BaseException) -> APIError:
    """Our domain errors -> the HTTP answer a client can act on."""
    if isinstance(exc, APIError):
        return exc
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ContextLengthError):
        return APIError(400, msg, code="context_length_exceeded", param="messages")
    if isinstance(exc, EmptyConversationError):
        return APIError(400, msg, code="empty_messages", param="messages")
    if isinstance(exc, ToolSchemaError):
        return APIError(400, msg, code="invalid_tools", param="tools")
    if isinstance(exc, IncompatibleAdapterError):
        return APIError(400, msg, code="incompatible_adapter", param="model")
    if isinstance(exc, PoolFullError):
        return APIError(503, msg, code="adapter_pool_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineClosedError):
        return APIError(503, msg, code="engine_closed")
    if isinstance(exc, UnknownAdapterError) or _is_registry_error(exc, "AdapterNotFoundError"):
        return APIError(404, msg, code="model_not_found", param="model")
    if _is_registry_error(exc, "InvalidReferenceError"):
        return APIError(
            404,
            f"{msg}; use 'auto', 'base' or an adapter reference such as legal, legal:prod, legal@3",
            code="model_not_found",
            param="model",
        )
    if _is_router_error(exc, "InvalidRequestError") or isinstance(exc, InvalidMessagesError):
        return APIError(400, msg, code="invalid_messages", param="messages")
    if isinstance(exc, TimeoutError):
        return APIError(504, msg, code="timeout")
    if isinstance(exc, ValueError):  # message content we cannot read (e.g. image blocks)
        return APIError(400, msg, code="invalid_value")
    incident = uuid.uuid4().hex[:12]
    if _is_database_error(exc):
        logger.error("registry database error (incident %s): %s", incident, redact_text(msg))
        return APIError(
            503,
            f"the adapter registry's database is unavailable (incident {incident}); retry later",
            code="registry_unavailable",
            headers={"Retry-After": "5"},
        )
    logger.error("unexpected server error (incident %s)", incident, exc_info=exc)
    return APIError(
        500,
        f"internal error (incident {incident}); the server's log has the details",
        code="internal_error",
    )


def _is_database_error(exc: BaseException) -> bool:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - sqlmodel brings sqlalchemy
        return False
    return isinstance(exc, SQLAlchemyError)


def _is_registry_error(exc: BaseException, name: str) -> bool:
    try:
        from loraroute.registry import errors as reg_errors
    except ImportError:  # pragma: no cover - registry is part of the package
        return False
    cls = getattr(reg_errors, name, None)
    return cls is not None and isinstance(exc, cls)


def _is_router_error(exc: BaseException, name: str) -> bool:
    try:
        from loraroute.router import errors as router_errors
    except ImportError:  # pragma: no cover
        return False
    cls = getattr(router_errors, name, None)
    return cls is not None and isinstance(exc, cls)


def validation_message(
    errors: list[dict[str, Any]], hints: dict[str, str] | None = None
) -> tuple[str, str | None, str]:
    """FastAPI/pydantic validation errors -> (one readable message, first param, code).

    A parameter the request model does not know is refused by name (``hints``: what to do
    instead, by parameter name)."""
    for err in errors:
        if err.get("type") == "extra_forbidden":
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc) or "body"
            hint = (hints or {}).get(loc[-1] if loc else "", "leave it out")
            return (
                f"this server does not support the parameter {where!r}; {hint}",
                where,
                "unsupported_parameter",
            )
    parts = []
    param = None
    code = "invalid_request"
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            detail = ctx.get("error") or err.get("msg", "")
            return (
                f"the request body is not valid JSON ({detail}); send a JSON object",
                None,
                "invalid_json",
            )
        if not loc and err.get("type") in ("dict_type", "model_attributes_type", "missing"):
            return (
                "the request body must be a JSON object (send Content-Type: application/json)",
                None,
                "invalid_json",
            )
        if param is None and loc:
            param = loc[0]
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, param, code
