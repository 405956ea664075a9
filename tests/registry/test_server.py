"""The HTTP registry: a real uvicorn server on loopback driven by the real client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry import (
    AdapterNotFoundError,
    AuthError,
    IntegrityError,
    RemoteError,
    RemoteRegistry,
    VersionConflictError,
    open_registry,
)
from loraroute.registry.auth import create_token
from loraroute.registry.testing import make_variant


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not start")


class ThreadServer:
    """uvicorn in a background thread of this process."""

    def __init__(self, registry, **kw) -> None:
        import uvicorn

        from loraroute.registry.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(registry, **kw), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_up(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def store(tmp_path, lr_home):
    reg = open_registry(f"sqlite:///{tmp_path / 'srv' / 'registry.db'}")
    yield reg
    reg.close()


@pytest.fixture
def server(store):
    tokens = {scope: create_token(store, scope) for scope in ("read", "write", "admin")}
    with ThreadServer(store) as srv:
        srv.tokens = tokens
        yield srv


def client(server, scope: str | None) -> RemoteRegistry:
    return RemoteRegistry(server.url, token=server.tokens[scope] if scope else None)


def test_push_pull_roundtrip_and_same_verbs(server, store, tiny_adapter, tmp_path):
    w, admin = client(server, "write"), client(server, "admin")
    v = w.push(tiny_adapter, "legal", domain="law", tags={"t": "1"}, routing_examples=["nda"])
    assert v.ref == "legal@1" and v.digest == store.resolve("legal").digest
    assert w.push(tiny_adapter, "legal") == v  # identical content: no-op
    out = w.pull("legal", tmp_path / "out")
    for f in v.files:
        assert (out / f.path).read_bytes() == (tiny_adapter / f.path).read_bytes()
    assert w.local_path("legal@1").is_dir()
    folder = w.local_path("legal@1")
    w.resolve = None  # a version already resolved needs no second request
    assert w.local_path(v) == folder
    del w.resolve
    assert w.alias_set("legal", "prod", 1).aliases == ["prod"]
    assert [x.ref for x in w.list(tag="t=1")] == ["legal@1"]
    assert [x.ref for x in w.serving()] == ["legal@1"]
    assert w.model_card("legal") == (tiny_adapter / "README.md").read_text()
    rev = w.revision()
    with pytest.raises(VersionConflictError, match="aliases point"):
        admin.rm("legal@1")
    with pytest.raises(AdapterNotFoundError, match="legal@9"):
        w.resolve("legal@9")
    assert admin.verify().ok
    assert [x.ref for x in admin.rm("legal", force=True)] == ["legal@1"]
    assert w.revision() != rev and w.list() == []
    assert len(admin.gc(grace_seconds=0).removed) == 3


def test_existing_blobs_are_not_uploaded_again(server, store, tiny_adapter, tmp_path):
    w = client(server, "write")
    v1 = w.push(tiny_adapter, "legal")
    weights = next(f for f in v1.files if f.path.endswith(".safetensors"))
    os.utime(store.blobs.path(weights.digest), (1000, 1000))
    v2 = w.push(make_variant(tiny_adapter, tmp_path / "v2", "two"), "legal")
    assert v2.version == 2
    # a re-upload would have refreshed the blob's mtime
    assert store.blobs.path(weights.digest).stat().st_mtime == 1000


def test_tokens_and_scopes(server, tiny_adapter):
    with pytest.raises(AuthError, match="needs a bearer token"):
        client(server, None).list()
    with pytest.raises(AuthError, match="unknown"):
        RemoteRegistry(server.url, token="lrt_wrong").list()
    with pytest.raises(AuthError, match="needs scope 'write'"):
        client(server, "read").push(tiny_adapter, "legal")
    client(server, "write").push(tiny_adapter, "legal")
    assert [v.ref for v in client(server, "read").list()] == ["legal@1"]
    with pytest.raises(AuthError, match="needs scope 'admin'"):
        client(server, "write").rm("legal@1")


def test_tokens_are_stored_hashed(store):
    from sqlmodel import Session, select

    from loraroute.registry.tables import Token

    token = create_token(store, "read")
    with Session(store._read) as s:
        rows = s.exec(select(Token)).all()
    assert token not in [r.token_hash for r in rows] and len(rows[0].token_hash) == 64


def test_anonymous_read_is_a_server_option(store, tiny_adapter):
    store.push(tiny_adapter, "legal")
    with ThreadServer(store, allow_anonymous_read=True) as srv:
        anon = RemoteRegistry(srv.url)
        assert [v.ref for v in anon.list()] == ["legal@1"]
        with pytest.raises(AuthError):
            anon.push(tiny_adapter, "other")


def test_corrupted_blob_fails_remote_pull(server, store, tiny_adapter, tmp_path):
    v = client(server, "write").push(tiny_adapter, "legal")
    w = next(f for f in v.files if f.path.endswith(".safetensors"))
    p = store.blobs.path(w.digest)
    p.write_bytes(p.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        client(server, "read").pull("legal", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_upload_digest_refused(server):
    r = httpx.put(
        f"{server.url}/v1/blobs/sha256:{'0' * 64}",
        content=b"hello",
        headers={"authorization": f"Bearer {server.tokens['write']}"},
    )
    assert r.status_code == 422 and "does not match" in r.json()["detail"]


def test_manifest_without_blobs_refused(server):
    with pytest.raises(IntegrityError, match="upload it before the manifest"):
        client(server, "write")._one(
            "POST",
            "/adapters/legal/versions",
            json={
                "files": [
                    {"path": "adapter_config.json", "digest": "sha256:" + "1" * 64, "size": 3}
                ],
                "meta": {},
            },
        )


def test_cli_against_http_registry(server, tiny_adapter, tmp_path):
    env = {"LORAROUTE_REGISTRY": server.url, "LORAROUTE_REGISTRY_TOKEN": server.tokens["write"]}
    runner = CliRunner()
    r = runner.invoke(main, ["push", str(tiny_adapter), "--name", "legal", "--json"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["ls", "--json"], env=env)
    assert [v["ref"] for v in json.loads(r.output)] == ["legal@1"]
    r = runner.invoke(main, ["pull", "legal", "-o", str(tmp_path / "o")], env=env)
    assert r.exit_code == 0 and (tmp_path / "o" / "adapter_config.json").is_file()


def test_server_killed_mid_push_leaves_nothing_visible(store, tiny_adapter, tmp_path):
    token = create_token(store, "write")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    big = tmp_path / "big"
    shutil.copytree(tiny_adapter, big)
    (big / "notes.txt").write_bytes(os.urandom(8 << 20))  # long enough to be cut mid-upload
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraroute.cli",
            "registry",
            "serve",
            "--port",
            str(port),
            "--registry",
            store.url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(url)
        calls = []

        def kill_midway(path: str, done: int, total: int) -> None:
            calls.append(path)
            if path == "notes.txt" and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

        with pytest.raises(RemoteError):
            RemoteRegistry(url, token=token).push(big, "legal", progress=kill_midway)
        assert "notes.txt" in calls
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.list() == [] and store.verify().ok
    for digest, path in store.blobs.all_digests():
        from loraroute.registry.blobs import sha256_file

        assert sha256_file(path)[0] == digest
