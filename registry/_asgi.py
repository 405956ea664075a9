"""ASGI middleware of the HTTP registry: request-body limits and refusal of query-string
tokens, both answered before any route code runs.

Starlette's own ``RequestBodyLimitMiddleware`` answers a plain-text "Content Too Large" that
names neither the limit nor its setting, and one limit per route; here a blob upload and every
other body have their own limit, and the 413 says which and how to raise it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import Limits, size_text

# names a client might put a token under, and the shape of a registry token anywhere
SECRET_PARAMS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "auth",
        "authorization",
        "bearer",
        "password",
        "secret",
    }
)
_TOKEN_VALUE = re.compile(r"lrt_[A-Za-z0-9_\-]{20,}")
QUERY_TOKEN_MESSAGE = (
    "tokens are not accepted in the query string: URLs are written to access logs, proxies "
    "and browser history. Send the token as the header 'Authorization: Bearer <token>'"
)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its limit; the app's handler answers 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    """Refuse a request whose ``Content-Length`` claims more than its limit before reading
    a byte, and cut off a body (chunked or lying about its length) once it passes the limit.

    Blob uploads (``PUT {blob_path}...``) are bounded by ``limits.max_blob_bytes``, every
    other body by ``limits.max_request_bytes``.
    """

    def __init__(self, app: ASGIApp, limits: Limits, blob_path: str = "/v1/blobs/") -> None:
        self.app = app
        self.limits = limits
        self.blob_path = blob_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "PUT" and scope["path"].startswith(self.blob_path):
            field, what = "max_blob_bytes", "the blob upload"
        else:
            field, what = "max_request_bytes", "the request body"
        limit: int = getattr(self.limits, field)
        claimed = Headers(scope=scope).get("content-length")
        if claimed is not None and claimed.isascii() and claimed.isdigit() and int(claimed) > limit:
            detail = str(self.limits.refuse(field, f"{what} claims {size_text(int(claimed))}"))
            response = JSONResponse(
                {"error": "LimitError", "detail": detail},
                status_code=413,
                headers={"connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(
                        str(self.limits.refuse(field, f"{what} passed {size_text(limit)}"))
                    )
            return message

        await self.app(scope, limited, send)


class RefuseQueryTokens:
    """Answer 400 to a request carrying a token in its query string (``?token=``,
    ``?access_token=``, or any value shaped like a registry token), with or without a valid
    Authorization header: a secret in a URL is already leaked to every log on the way."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            query = scope["query_string"].decode("latin-1")
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(
                k.lower() in SECRET_PARAMS or _TOKEN_VALUE.search(v) for k, v in pairs
            ) or _TOKEN_VALUE.search(query):
                response = JSONResponse(
                    {"error": "AuthError", "detail": QUERY_TOKEN_MESSAGE}, status_code=400
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["BodyLimit", "BodyTooLarge", "RefuseQueryTokens"]
