"""Bearer API keys: required when the server has any (``ServerConfig.api_keys``), and only
ever accepted in the Authorization header."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError

# query parameters that would carry a key: a secret in a URL is already in every log on the way
SECRET_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "authorization", "bearer"}
)


async def require_key(request: Request) -> None:
    """A FastAPI dependency: refuse a request without one of the server's keys (401)."""
    keys = request.app.state.lr.config.api_keys
    if not keys:
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
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise APIError(
            401,
            "the API key is not valid for this server; check the key you sent",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


class RefuseQuerySecrets:
    """Answer 400 to a request with an API key or token in its query string, with or without
    a valid Authorization header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
                error = APIError(
                    400,
                    "API keys are accepted only in the 'Authorization: Bearer <key>' header, "
                    "never in the URL (it is logged on the way); remove it from the query string",
                    code="key_in_query",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
