"""Bearer API keys: required when the server has any (``ServerConfig.api_keys``)."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError


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
