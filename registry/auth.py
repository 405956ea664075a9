"""Bearer tokens of the HTTP registry: random secrets, stored only as sha256 hashes.

Scopes are ordered: ``admin`` includes ``write``, which includes ``read``.

Example::

    >>> token = create_token(open_registry(), "write")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

from sqlmodel import Session, select

from ._db import bump_revision
from .errors import AuthError
from .local import Registry
from .tables import Token

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[str, ...] = ("read", "write", "admin")
PREFIX = "lrt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(reg: Registry, scope: str, *, name: str = "") -> str:
    """Store a new token's hash with ``scope``; return the token (shown once)."""
    if scope not in SCOPES:
        raise AuthError(f"token scope {scope!r} is not one of {', '.join(SCOPES)}")
    if not isinstance(reg, Registry):
        raise AuthError("tokens are created on the server's own store (a sqlite/postgresql URL)")
    token = PREFIX + secrets.token_urlsafe(32)
    with Session(reg._write) as s:
        bump_revision(s)
        s.add(Token(name=name, token_hash=hash_token(token), scope=scope))
        s.commit()
    return token


def token_scope(reg: Registry, token: str) -> str | None:
    """The scope of ``token``, or None if unknown."""
    digest = hash_token(token)
    with Session(reg._read) as s:
        row = s.exec(select(Token).where(Token.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row.scope


def allows(have: str | None, need: str) -> bool:
    return have is not None and SCOPES.index(have) >= SCOPES.index(need)


__all__ = ["SCOPES", "allows", "create_token", "hash_token", "token_scope"]
