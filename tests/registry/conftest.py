"""Fixtures of the registry's tests: real stores (a SQLite file, a fresh PostgreSQL database
with a password in its URL) and real servers on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from loraroute.registry import open_registry

PG_PASSWORD = "hunter2-do-not-leak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, path: str = "/v1/health", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not start")


class ThreadServer:
    """A uvicorn server for ``app`` in a background thread of this process."""

    def __init__(self, app, health: str = "/v1/health") -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = health
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_up(self.url, self.health)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def pg_url(postgres_url) -> str:
    """A fresh PostgreSQL database whose URL carries a password (trust auth ignores it)."""
    return make_url(postgres_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, or a PostgreSQL database with a password."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'srv' / 'registry.db'}"
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url, tmp_path, lr_home):
    reg = open_registry(store_url, blob_dir=tmp_path / "srv" / "blobs")
    yield reg
    reg.close()


@pytest.fixture
def reg(store):
    """An empty registry on each metadata backend."""
    return store


@pytest.fixture
def store_location(store_url, tmp_path) -> tuple[str, str]:
    """``(url, blob_dir)`` of an empty registry on each metadata backend (for workers in
    other processes)."""
    return store_url, str(tmp_path / "srv" / "blobs")


@pytest.fixture
def sqlite_store(tmp_path, lr_home):
    reg = open_registry(f"sqlite:///{tmp_path / 'srv' / 'registry.db'}")
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def serve():
    """``with serve(app) as srv: srv.url``: a real uvicorn server on loopback."""
    return ThreadServer


@pytest.fixture(scope="session")
def pg_password() -> str:
    """The password inside ``pg_url``: it must never appear in any message or answer."""
    return PG_PASSWORD
