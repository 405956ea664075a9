"""Helpers for tests of code that uses the registry: throwaway PostgreSQL databases.

Example::

    >>> with temporary_postgres() as url:  # doctest: +SKIP
    ...     reg = open_registry(url, blob_dir=tmp / "blobs")
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from loraroute.redact import redact_text, redact_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server used for tests cannot be reached."""


@contextmanager
def temporary_postgres(admin_url: str = DEFAULT_ADMIN_URL) -> Iterator[str]:
    """Create a fresh database, yield its URL, drop it afterwards."""
    try:
        import psycopg2
    except ImportError as exc:
        raise PostgresUnavailable("psycopg2 is not installed: pip install psycopg2-binary") from exc
    try:
        conn = psycopg2.connect(admin_url, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        raise PostgresUnavailable(
            f"PostgreSQL at {redact_url(admin_url)} is unreachable: {redact_text(str(exc))}"
        ) from None
    conn.autocommit = True
    name = f"lr_test_{uuid.uuid4().hex[:12]}"
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def make_variant(src: str | Path, dest: str | Path, tag: str) -> Path:
    """Copy an adapter folder, changing only its README, so its content digest differs."""
    import shutil

    dest = Path(dest)
    shutil.copytree(src, dest)
    (dest / "README.md").write_text(f"# variant {tag}\n")
    return dest


def push_variants(
    url: str, blob_dir: str | None, src: str, name: str, tags: list[str], workdir: str
) -> list[int]:
    """Push a variant of ``src`` per tag under ``name`` (a multiprocessing/subprocess worker)."""
    from . import open_registry

    reg = open_registry(url, blob_dir=blob_dir)
    numbers = []
    for tag in tags:
        folder = make_variant(src, Path(workdir) / f"{name}-{tag}", tag)
        v = reg.push(folder, name, base_fingerprint="sha256:" + "0" * 64, base_model_id="tiny")
        numbers.append(v.version)
    return numbers


__all__ = [
    "DEFAULT_ADMIN_URL",
    "PostgresUnavailable",
    "make_variant",
    "push_variants",
    "temporary_postgres",
]
