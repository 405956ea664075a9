"""Engines for SQLite (WAL, busy timeout, BEGIN IMMEDIATE for writers) and PostgreSQL; the
schema is created and upgraded by :mod:`loraroute.registry.migrate`."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exc, update
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from loraroute.redact import redact_text, redact_url

from .errors import RegistryError
from .tables import State

logger = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 30_000


def sqlite_path(url: str) -> Path | None:
    try:
        u = make_url(url)
    except exc.ArgumentError:
        raise RegistryError(
            f"cannot read registry URL {redact_url(url)!r}: use sqlite:///path.db, "
            f"postgresql://user@host/db or http(s)://host:port"
        ) from None
    if u.get_backend_name() != "sqlite":
        return None
    if not u.database or u.database == ":memory:":
        raise RegistryError(
            f"registry URL {redact_url(url)!r} names an in-memory SQLite database; blobs and "
            f"metadata must persist, use sqlite:///path/to/registry.db"
        )
    return Path(u.database).expanduser().absolute()


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling is lazy)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # writers take the write lock up front: no deadlocked lock upgrades between processes
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _pg_driver(url: str) -> str:
    """Plain ``postgresql://`` means psycopg (v3) to SQLAlchemy 2.1; use psycopg2 when only
    that one is installed (it is what loraroute's ``postgres`` extra installs)."""
    u = make_url(url)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(read engine, write engine) for ``url``; the same engine twice outside SQLite."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _sqlite_engine(url, False), _sqlite_engine(url, True)
    try:
        engine = create_engine(_pg_driver(url), pool_pre_ping=True)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
        raise RegistryError(
            f"cannot open registry URL {redact_url(url)!r}: {redact_text(str(e))}. Use "
            f"sqlite:///path.db, "
            f"postgresql://user@host/db (pip install psycopg2-binary) or http(s)://host:port"
        ) from None
    return engine, engine


def bump_revision(session: Session) -> int:
    """Increment the state row first in a write transaction; on PostgreSQL this row lock
    also serialises writers, so version numbers never collide."""
    session.execute(update(State).where(State.id == 1).values(revision=State.revision + 1))  # type: ignore[arg-type]
    return session.exec(select(State.revision).where(State.id == 1)).one()
