"""Size limits: clear 413s on the HTTP registry, the same limits in the local API and CLI."""

from __future__ import annotations

import json
import shutil
import socket

import httpx
import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry import LimitError, Limits, RemoteRegistry, open_registry
from loraroute.registry.auth import create_token

SMALL = Limits(
    max_blob_bytes=64 * 1024,
    max_request_bytes=32 * 1024,
    max_manifest_files=4,
    max_routing_examples=3,
    max_routing_example_chars=40,
    max_model_card_bytes=8 * 1024,
)


def test_defaults_and_environment(monkeypatch):
    from loraroute.settings import get_settings

    limits = Limits()
    assert limits == Limits.from_settings(get_settings())
    assert limits.max_blob_bytes == 4 << 30 and limits.max_manifest_bytes == 1 << 20
    assert limits.max_model_card_bytes == 1 << 20 and limits.max_routing_examples == 10_000
    monkeypatch.setenv("LORAROUTE_REGISTRY_MAX_BLOB_BYTES", "8GiB")
    monkeypatch.setenv("LORAROUTE_REGISTRY_TOKEN", "lrt_x")  # a neighbour, not a limit
    assert Limits.from_settings(get_settings()).max_blob_bytes == 8 << 30
    with pytest.raises(ValueError):
        Limits(max_blob_bytes=-1)
    with pytest.raises(ValueError):
        Limits(max_blob_size=1)  # a typo is an error, not a silent default


@pytest.fixture
def server(sqlite_store, serve):
    from loraroute.registry.server import create_app

    tokens = {s: create_token(sqlite_store, s) for s in ("write", "admin")}
    with serve(create_app(sqlite_store, limits=SMALL)) as srv:
        srv.tokens = tokens
        srv.headers = {"authorization": f"Bearer {tokens['write']}"}
        yield srv


def raw_request(url: str, head: str, chunks: list[bytes] = ()) -> tuple[int, dict]:
    """Send a request by hand (headers, then body pieces) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head.encode())
        for c in chunks:
            s.sendall(c)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            more = s.recv(65536)
            if not more:
                break
            data += more
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2] or b"{}")


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_claimed_oversize_blob_refused_before_reading(server, sqlite_store):
    digest = "sha256:" + "0" * 64
    head = (
        f"PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.tokens['write']}\r\n"
        f"Content-Length: {10**12}\r\n\r\n"
    )
    status, body = raw_request(server.url, head)  # no body is ever sent
    assert status == 413 and body["error"] == "LimitError"
    assert "65536" in body["detail"] and "LORAROUTE_REGISTRY_MAX_BLOB_BYTES" in body["detail"]
    assert not list(sqlite_store.blobs.tmp_dir.glob("*"))


def test_chunked_blob_cut_off_past_the_limit(server, sqlite_store):
    digest = "sha256:" + "0" * 64
    head = (
        f"PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.tokens['write']}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, body = raw_request(server.url, head, [chunk] * 5)  # 80 KiB > 64 KiB, never ends
    assert status == 413 and body["error"] == "LimitError"
    assert not list(sqlite_store.blobs.all_digests())
    assert not list(sqlite_store.blobs.tmp_dir.glob("*"))


def test_claimed_oversize_json_body_refused(server):
    head = (
        "POST /v1/adapters/legal/versions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.tokens['write']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    )
    status, body = raw_request(server.url, head)
    assert status == 413 and "LORAROUTE_REGISTRY_MAX_REQUEST_BYTES" in body["detail"]


def test_chunked_json_body_cut_off(server):
    r = httpx.post(
        server.url + "/v1/adapters/legal/versions",
        content=iter([b'{"files": [], "meta": {"description": "' + b"x" * 40_000 + b'"}}']),
        headers={**server.headers, "content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"] == "LimitError"


def manifest(n_files: int, **meta) -> dict:
    files = [
        {"path": f"f{i}.txt", "digest": "sha256:" + "1" * 64, "size": 1} for i in range(n_files)
    ]
    return {"files": files, "meta": meta}


@pytest.mark.parametrize(
    "body, what",
    [
        (manifest(5), "5 files"),
        (manifest(1, routing_examples=["a", "b", "c", "d"]), "4 routing examples"),
        (manifest(1, routing_examples=["x" * 41]), "41 characters"),
    ],
)
def test_manifest_limits_are_413_before_blobs_are_checked(server, body, what):
    r = httpx.post(server.url + "/v1/adapters/legal/versions", json=body, headers=server.headers)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "LimitError" and what in r.json()["detail"]


def big_card_adapter(tiny_adapter, tmp_path, size: int):
    folder = tmp_path / "big-card"
    shutil.copytree(tiny_adapter, folder)
    (folder / "README.md").write_text("#" * size)
    return folder


def test_model_card_limit_over_http(server, tiny_adapter, tmp_path, sqlite_store):
    client = RemoteRegistry(server.url, token=server.tokens["write"])
    with pytest.raises(LimitError, match="README.md.*9000 bytes"):
        client.push(big_card_adapter(tiny_adapter, tmp_path, 9000), "legal")
    assert sqlite_store.list() == []


def test_blob_limit_for_a_real_client_push(server, tiny_adapter, tmp_path, sqlite_store):
    folder = tmp_path / "big"
    shutil.copytree(tiny_adapter, folder)
    (folder / "notes.txt").write_bytes(b"n" * (65 * 1024))
    with pytest.raises(LimitError, match="notes.txt"):
        RemoteRegistry(server.url, token=server.tokens["write"], limits=SMALL).push(folder, "legal")
    with pytest.raises(LimitError, match="65536"):  # a client with default limits: the server says
        RemoteRegistry(server.url, token=server.tokens["write"]).push(folder, "legal")
    assert sqlite_store.list() == []


def test_local_api_enforces_the_same_limits(tmp_path, lr_home, tiny_adapter):
    reg = open_registry(f"sqlite:///{tmp_path / 'r' / 'registry.db'}", limits=SMALL)
    with pytest.raises(LimitError, match="4 routing examples.*at most 3"):
        reg.push(tiny_adapter, "legal", routing_examples=["a", "b", "c", "d"])
    with pytest.raises(LimitError, match="41 characters"):
        reg.push(tiny_adapter, "legal", routing_examples=["x" * 41])
    with pytest.raises(LimitError, match="README.md"):
        reg.push(big_card_adapter(tiny_adapter, tmp_path, 9000), "legal")
    assert reg.list() == [] and reg.revision() == "0"
    assert reg.push(tiny_adapter, "legal", routing_examples=["a", "b", "c"]).version == 1


def test_cli_push_reports_limits(tmp_path, lr_home, tiny_adapter):
    url = f"sqlite:///{tmp_path / 'r' / 'registry.db'}"
    examples = tmp_path / "examples.txt"
    examples.write_text("\n".join(f"example {i}" for i in range(5)))
    r = CliRunner().invoke(
        main,
        ["push", str(tiny_adapter), "--name", "legal", "--examples-file", str(examples)],
        env={"LORAROUTE_REGISTRY": url, "LORAROUTE_REGISTRY_MAX_ROUTING_EXAMPLES": "4"},
    )
    assert r.exit_code == 1 and "5 routing examples" in r.output and "Traceback" not in r.output
    assert "LORAROUTE_REGISTRY_MAX_ROUTING_EXAMPLES" in r.output


def test_stored_oversize_card_is_not_served_whole(server, sqlite_store, tiny_adapter, tmp_path):
    """A card stored before the limit existed is refused, not read into memory."""
    folder = big_card_adapter(tiny_adapter, tmp_path, 9000)
    open_registry(sqlite_store.url, limits=Limits()).push(folder, "legal")
    r = httpx.get(server.url + "/v1/model-card", params={"ref": "legal"}, headers=server.headers)
    assert r.status_code == 413 and "9000" in r.json()["detail"]
