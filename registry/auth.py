"""Bearer tokens of the HTTP registry: random secrets, stored only as sha256 hashes.

Scopes are ordered: ``admin`` includes ``write``, which includes ``read``. A token may be
limited to adapters whose names start with a prefix, may expire, and may be revoked; every
request looks the token up again, so a revocation holds from the next request on.

Example::

    >>> token = create_token(reg, "write", prefix="legal", expires_in=parse_duration("30d"))  # doctest: +SKIP
    >>> [(t.id, t.scope, t.prefix) for t in list_tokens(reg)]  # doctest: +SKIP
    [(1, 'write', 'legal')]
    >>> revoke_token(reg, 1)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import exc, update
from sqlmodel import Session, col, select

from ._db import bump_revision
from ._text import check_text, shown
from .errors import AuthError, ForbiddenError, InvalidRequestError
from .local import Registry
from .refs import NAME_RE
from .tables import Token, TokenState

logger = logging.getLogger(__name__)

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[str, ...] = ("read", "write", "admin")
PREFIX = "lrt_"
TOKEN_RE = re.compile(r"lrt_[A-Za-z0-9_\-]{43}")  # what create_token makes
LAST_USED_EVERY = timedelta(seconds=60)  # how stale ``last_used_at`` may be: fewer writes
_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _utc(dt: datetime | None) -> datetime | None:
    """Datetimes come back naive from SQLite and from PostgreSQL ``timestamp``: stored in UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=timezone.utc)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``30d`` -> 30 days; units ``s``, ``m``, ``h``, ``d``, ``w``; a positive whole number."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if m is None or int(m[1]) == 0:
        raise InvalidRequestError(
            f"duration {shown(text)} is not allowed: use a positive whole number and a unit "
            f"s, m, h, d or w, e.g. 30d or 12h"
        )
    return timedelta(**{_UNITS[m[2]]: int(m[1])})


def check_prefix(prefix: str) -> str:
    """An adapter-name prefix (``legal`` or ``legal*``) -> ``legal``; InvalidRequestError if
    no adapter name could start with it."""
    clean = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("*") else prefix
    if not isinstance(clean, str) or not NAME_RE.fullmatch(clean) or ".." in clean:
        raise InvalidRequestError(
            f"adapter-name prefix {shown(prefix)} is not allowed: adapter names start with an "
            f"ASCII letter or digit and continue with letters, digits, '.', '_' or '-'"
        )
    return clean


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token, never the secret nor its hash."""

    id: int
    name: str
    scope: str
    prefix: str | None
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, need: str) -> bool:
        return allows(self.scope, need)

    def allows_name(self, name: str) -> bool:
        return self.prefix is None or name.startswith(self.prefix)

    def check_name(self, name: str) -> None:
        """Raise ForbiddenError unless this token may act on adapter ``name``."""
        if not self.allows_name(name):
            raise ForbiddenError(
                f"token #{self.id} is limited to adapters whose names start with "
                f"{self.prefix!r}; it may not act on {name!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("created_at", "expires_at", "last_used_at", "revoked_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def _info(t: Token, st: TokenState | None) -> TokenInfo:
    return TokenInfo(
        id=t.id or 0,
        name=t.name,
        scope=t.scope,
        prefix=st.name_prefix if st else None,
        created_at=_utc(t.created_at) or t.created_at,
        expires_at=_utc(st.expires_at) if st else None,
        last_used_at=_utc(st.last_used_at) if st else None,
        revoked_at=_utc(st.revoked_at) if st else None,
    )


def _local(reg: Any) -> Registry:
    if not isinstance(reg, Registry):
        raise AuthError("tokens are managed on the server's own store (a sqlite/postgresql URL)")
    return reg


def create_token(
    reg: Registry,
    scope: str,
    *,
    name: str = "",
    prefix: str | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """Store a new token's hash with ``scope`` (and optionally an adapter-name ``prefix`` and
    a lifetime); return the token, which is shown once and cannot be recovered."""
    return issue_token(reg, scope, name=name, prefix=prefix, expires_in=expires_in)[0]


def issue_token(
    reg: Registry,
    scope: str,
    *,
    name: str = "",
    prefix: str | None = None,
    expires_in: timedelta | None = None,
) -> tuple[str, TokenInfo]:
    """:func:`create_token`, also returning the new token's :class:`TokenInfo` (its id)."""
    if scope not in SCOPES:
        raise AuthError(f"token scope {scope!r} is not one of {', '.join(SCOPES)}")
    reg = _local(reg)
    check_text(name, "token name", max_chars=128)
    if prefix is not None:
        prefix = check_prefix(prefix)
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidRequestError(f"token lifetime {expires_in} must be positive")
    token = PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with Session(reg._write) as s:
        bump_revision(s)
        row = Token(name=name, token_hash=hash_token(token), scope=scope, created_at=now)
        s.add(row)
        s.flush()
        s.add(
            TokenState(
                token_id=row.id,  # type: ignore[arg-type]
                name_prefix=prefix,
                expires_at=now + expires_in if expires_in is not None else None,
            )
        )
        s.commit()
        (info,) = _rows(s, col(Token.id) == row.id)
    return token, info


def _rows(s: Session, *where: Any) -> list[TokenInfo]:
    q = select(Token, TokenState).join(
        TokenState, col(TokenState.token_id) == col(Token.id), isouter=True
    )
    for w in where:
        q = q.where(w)
    return [_info(t, st) for t, st in s.exec(q.order_by(col(Token.id)))]


def list_tokens(reg: Registry, *, include_revoked: bool = True) -> list[TokenInfo]:
    """Every token's id, name, scope, prefix, creation, expiry, last use and revocation."""
    with Session(_local(reg)._read) as s:
        rows = _rows(s)
    return [r for r in rows if include_revoked or r.revoked_at is None]


def revoke_token(reg: Registry, token_id: int) -> TokenInfo:
    """Revoke token ``token_id``: refused from the next request on. Revoking twice is a no-op."""
    reg = _local(reg)
    with Session(reg._write) as s:
        bump_revision(s)
        token = s.get(Token, token_id)
        if token is None:
            raise AuthError(
                f"no token with id {token_id}; `adapters registry token list` shows the ids"
            )
        state = s.get(TokenState, token_id)
        if state is None:  # a token made before lifecycles were recorded
            state = TokenState(token_id=token_id)
        if state.revoked_at is None:
            state.revoked_at = datetime.now(timezone.utc)
        s.add(state)
        s.commit()
        (info,) = _rows(s, col(Token.id) == token_id)
    return info


def authenticate(reg: Registry, token: str) -> TokenInfo:
    """The token's info if it is known, not revoked and not expired; else AuthError saying
    which. Records the use (at most once a minute per token)."""
    if not isinstance(token, str) or not token or len(token) > 256 or not token.isascii():
        raise AuthError("unknown or malformed bearer token")
    # the lookup is by the secret's sha256, so timing reveals nothing about the secret
    with Session(reg._read) as s:
        rows = _rows(s, col(Token.token_hash) == hash_token(token))
    if not rows:
        raise AuthError("unknown or malformed bearer token")
    info = rows[0]
    now = datetime.now(timezone.utc)
    if info.revoked_at is not None:
        raise AuthError(
            f"token #{info.id} was revoked on {info.revoked_at:%Y-%m-%d %H:%M} UTC; ask for a "
            f"new one (`adapters registry token create`)"
        )
    if info.expires_at is not None and info.expires_at <= now:
        raise AuthError(
            f"token #{info.id} expired on {info.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new "
            f"one (`adapters registry token create --expires ...`)"
        )
    if info.last_used_at is None or now - info.last_used_at >= LAST_USED_EVERY:
        _record_use(reg, info.id, now)
    return info


def _record_use(reg: Registry, token_id: int, now: datetime) -> None:
    """Best effort: a busy database delays the note of use, never the request's answer."""
    try:
        with Session(reg._write) as s:
            done = s.execute(
                update(TokenState)
                .where(col(TokenState.token_id) == token_id)
                .values(last_used_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                s.add(TokenState(token_id=token_id, last_used_at=now))
            s.commit()
    except (exc.OperationalError, exc.IntegrityError) as e:
        logger.debug("last use of token #%d not recorded: %s", token_id, type(e).__name__)


def token_scope(reg: Registry, token: str) -> str | None:
    """The scope of ``token``, or None if it is unknown, revoked or expired."""
    try:
        return authenticate(reg, token).scope
    except AuthError:
        return None


def allows(have: str | None, need: str) -> bool:
    return have is not None and SCOPES.index(have) >= SCOPES.index(need)


__all__ = [
    "SCOPES",
    "TokenInfo",
    "allows",
    "authenticate",
    "check_prefix",
    "create_token",
    "hash_token",
    "issue_token",
    "list_tokens",
    "parse_duration",
    "revoke_token",
    "token_scope",
]
