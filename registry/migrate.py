"""The registry's schema revision: checked on open, upgraded by Alembic.

Alembic is configured in code (no ``alembic.ini``): the revisions ship inside the package
(``loraroute/registry/migrations``) and record their state in the table
``lr_alembic_version``, so a database shared with another Alembic-managed application keeps
the two apart.

What opening a registry does with its database:

- empty: the tables are created at the newest revision (and stamped with it);
- current: nothing;
- behind (an older revision, or tables without a version table: a registry made before
  migrations existed): a **SQLite** file is upgraded in place at once (one user's file, and
  every revision so far only adds tables); a **PostgreSQL** registry is refused with
  :class:`SchemaError` until someone runs ``adapters registry migrate`` (a team's database
  changes when its operator says so, after a backup, not when any client happens to open it);
- ahead (a revision this release does not know: a newer loraroute migrated it): refused;
  upgrade loraroute.

Example::

    >>> from loraroute.registry.migrate import migrate_url, schema_status_url
    >>> schema_status_url("postgresql://reg@db/registry").state  # doctest: +SKIP
    'legacy'
    >>> migrate_url("postgresql://reg@db/registry")  # doctest: +SKIP
    SchemaStatus(state='current', current='0005', head='0005')
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    exc,
    inspect,
    select,
    text,
)

from loraroute.redact import redact_text, redact_url

from ._db import make_engines, sqlite_path
from .errors import RegistryError, SchemaError
from .tables import TABLES, State

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "lr_alembic_version"
# oldest first; tests check this against the scripts
REVISIONS = ("0001", "0002", "0003", "0004", "0005")
BASELINE, HEAD = REVISIONS[0], REVISIONS[-1]
_LEGACY_TABLES = {"lr_adapter", "lr_version", "lr_state"}
_PG_LOCK = 7_320_131_051  # pg_advisory_xact_lock key: one schema change at a time

# the table Alembic keeps its revision in, as Alembic itself creates it
version_table = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)

State_ = Literal["empty", "legacy", "behind", "current", "ahead"]


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands: ``current`` is its revision (None: empty, or a
    registry made before migrations, ``state`` 'legacy')."""

    state: State_
    current: str | None
    head: str = HEAD

    def describe(self) -> str:
        if self.state == "empty":
            return "no registry tables yet"
        if self.state == "legacy":
            return "the schema of a release before migrations (no version table)"
        return f"revision {self.current}"

    def to_dict(self) -> dict[str, str | None]:
        return {"state": self.state, "current": self.current, "head": self.head}


def schema_status(conn: Connection) -> SchemaStatus:
    names = set(inspect(conn).get_table_names())
    revs: list[str] = []
    if VERSION_TABLE in names:
        revs = [r[0] for r in conn.execute(select(version_table.c.version_num))]
    if not revs:
        return SchemaStatus("legacy" if names & _LEGACY_TABLES else "empty", None)
    if len(revs) > 1 or revs[0] not in REVISIONS:
        return SchemaStatus("ahead", ",".join(sorted(revs)))
    return SchemaStatus("current" if revs[0] == HEAD else "behind", revs[0])


def _lock(conn: Connection) -> None:
    """One schema change at a time (SQLite writers already hold the write lock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})


def _unreachable(engine: Engine, e: exc.DBAPIError | exc.OperationalError) -> RegistryError:
    cause = getattr(e, "orig", None) or e
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return RegistryError(
        f"cannot open the registry database {engine.url.render_as_string(hide_password=True)}: "
        f"{redact_text(first)}; check the URL and that the database server runs and accepts "
        f"connections"
    )


def _ahead(where: str, status: SchemaStatus) -> SchemaError:
    return SchemaError(
        f"the registry database {where} has schema {status.describe()}, newer than this "
        f"loraroute knows (its newest is {HEAD}); a newer loraroute migrated it: upgrade "
        f"loraroute (pip install -U loraroute)"
    )


def _create(conn: Connection) -> None:
    """A new registry: the tables as ``tables.py`` declares them, stamped at the head (the
    migration tests check that this equals running every revision)."""
    TABLES[0].metadata.create_all(conn, tables=TABLES)
    version_table.create(conn, checkfirst=True)
    conn.execute(State.__table__.insert().values(id=1, revision=0))  # type: ignore[attr-defined]
    conn.execute(version_table.insert().values(version_num=HEAD))


def _alembic_config(conn: Connection):  # type: ignore[no-untyped-def]
    try:
        from alembic.config import Config
    except ImportError as e:  # a core dependency; a broken install
        raise ImportError("schema migrations need alembic: pip install 'alembic>=1.13'") from e
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def upgrade(engine: Engine, *, where: str = "") -> tuple[SchemaStatus, SchemaStatus]:
    """Bring ``engine``'s database to the newest revision, in one transaction: an empty one
    is created, a legacy one stamped at the baseline first. Returns (before, after)."""
    where = where or engine.url.render_as_string(hide_password=True)
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                _lock(conn)
                before = schema_status(conn)
                if before.state == "ahead":
                    raise _ahead(where, before)
                if before.state == "empty":
                    _create(conn)
                elif before.state != "current":
                    from alembic import command

                    cfg = _alembic_config(conn)
                    if before.state == "legacy":
                        command.stamp(cfg, BASELINE)
                    command.upgrade(cfg, "head")
                after = schema_status(conn)
            if before.state not in ("empty", "current"):
                logger.info("registry %s: schema %s -> %s", where, before.describe(), HEAD)
            return before, after
        except (exc.IntegrityError, exc.ProgrammingError) as e:  # raced another creator
            if attempt == 4:
                raise _unreachable(engine, e) from None
            logger.debug("schema creation raced (%s); retrying", redact_text(str(e)))
            time.sleep(0.05 * (attempt + 1))
        except exc.OperationalError as e:
            if attempt == 4 or "locked" not in str(e):
                raise _unreachable(engine, e) from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_schema(read: Engine, write: Engine, url: str) -> SchemaStatus:
    """What opening a registry does (see the module docstring); returns the status found."""
    where = redact_url(url)
    try:
        with read.connect() as conn:
            status = schema_status(conn)
    except (exc.OperationalError, exc.ProgrammingError, exc.DBAPIError) as e:
        raise _unreachable(read, e) from None
    if status.state == "current":
        return status
    if status.state == "ahead":
        raise _ahead(where, status)
    if status.state != "empty" and sqlite_path(url) is None:
        raise SchemaError(
            f"the registry database {where} has schema {status.describe()}; this loraroute "
            f"needs revision {HEAD}. Back up the database, then run `adapters registry "
            f"migrate --registry {where}` once (it upgrades in place; data is kept)"
        )
    upgrade(write, where=where)
    return status


@contextmanager
def _engine(url: str):  # type: ignore[no-untyped-def]
    read, write = make_engines(url)
    try:
        yield write
    finally:
        read.dispose()
        write.dispose()


def schema_status_url(url: str) -> SchemaStatus:
    """The schema status of the registry database at ``url`` (changes nothing)."""
    with _engine(url) as engine:
        try:
            with engine.connect() as conn:
                return schema_status(conn)
        except (exc.OperationalError, exc.ProgrammingError, exc.DBAPIError) as e:
            raise _unreachable(engine, e) from None


def migrate_url(url: str) -> tuple[SchemaStatus, SchemaStatus]:
    """Upgrade the registry database at ``url`` to the newest revision; (before, after)."""
    if url.startswith(("http://", "https://")):
        raise RegistryError(
            f"{redact_url(url)} is a registry server: migrate its database (sqlite:// or "
            f"postgresql://) where it is reachable, e.g. on the server's host"
        )
    with _engine(url) as engine:
        return upgrade(engine, where=redact_url(url))


__all__ = [
    "BASELINE",
    "HEAD",
    "REVISIONS",
    "VERSION_TABLE",
    "SchemaStatus",
    "ensure_schema",
    "migrate_url",
    "schema_status",
    "schema_status_url",
    "upgrade",
]
