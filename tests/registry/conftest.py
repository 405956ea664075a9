"""Fixtures of the registry's tests: real stores (a SQLite file, a fresh PostgreSQL database
with a password in its URL) and real servers on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """An S3 API server on loopback: moto's server mode, as a real process on a free port."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, "/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


S3_KEY_ID, S3_SECRET = "lr-test-key-id", "s3-secret-do-not-leak"


def make_s3_settings(moto_url: str, home: Path):
    """Settings whose blob store is a fresh bucket on the moto server at ``moto_url``
    (credentials are checked by nothing there, but must never show)."""
    import uuid

    import boto3

    from loraroute.settings import get_settings

    bucket = f"lr-{uuid.uuid4().hex[:16]}"
    boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    ).create_bucket(Bucket=bucket)
    return get_settings(
        home=home,
        blob_store=f"s3://{bucket}/team",
        s3_endpoint_url=moto_url,
        s3_region="us-east-1",
        s3_access_key_id=S3_KEY_ID,
        s3_secret_access_key=S3_SECRET,
        s3_part_size=5 << 20,
    )


@pytest.fixture
def s3_settings(moto_server, lr_home):
    """Settings whose blob store is a fresh bucket on the moto server."""
    return make_s3_settings(moto_server, lr_home.home)


@pytest.fixture
def s3_raw(s3_settings):
    """``raw_client`` of the test bucket."""
    return raw_client(s3_settings)


def raw_client(settings):
    """A plain boto3 client on the settings' bucket, to look at (or damage) objects behind
    the store's back: ``(client, bucket, prefix)``."""
    import boto3

    from loraroute.registry.blobs.s3 import parse_s3_url

    bucket, prefix = parse_s3_url(settings.blob_store)
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
    )
    return client, bucket, prefix


@pytest.fixture
def after_next_commit():
    """``with after_next_commit(action): ...`` runs ``action`` once, right after the next
    session commit in this process: another writer's turn between a commit and what follows."""
    from sqlalchemy import event
    from sqlmodel import Session

    @contextmanager
    def hook(action: Callable[[], object]) -> Iterator[list[bool]]:
        done: list[bool] = []

        def once(session) -> None:
            if not done:
                done.append(True)
                action()

        event.listen(Session, "after_commit", once)
        try:
            yield done
        finally:
            event.remove(Session, "after_commit", once)

    return hook
