"""A hostile HTTP registry on loopback: every value it returns is untrusted input.

The server below answers like a loraroute registry but with malicious values; the client must
raise a clear RegistryError and write or remove nothing outside its checkout folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from loraroute.registry import (
    IntegrityError,
    InvalidResponseError,
    Limits,
    RegistryError,
    RemoteError,
    RemoteRegistry,
)
from loraroute.registry._manifest import manifest_digest
from loraroute.registry.tables import FileInfo

CONFIG = b'{"peft_type": "LORA", "r": 4}'
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


def good_version(**overrides) -> dict:
    files = [FileInfo("adapter_config.json", CONFIG_DIGEST, len(CONFIG))]
    v = {
        "name": "legal",
        "version": 1,
        "digest": manifest_digest(files),
        "created_at": "2025-01-01T00:00:00+00:00",
        "files": [f.to_dict() for f in files],
        "aliases": [],
    }
    v.update(overrides)
    if "files" in overrides and "digest" not in overrides:
        # a consistent digest, so that the refusal comes from the file check under test
        listed = [FileInfo(f["path"], f["digest"], f["size"]) for f in overrides["files"]]
        v["digest"] = manifest_digest(listed)
    return v


class Hostile:
    """What the hostile server answers; tests set ``answers[path]``."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.blob: bytes | None = None
        self.blob_sent = 0
        self.blobs: dict[str, bytes] = {}  # served by digest before anything else

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/health")
        def health():
            return {"status": "ok"}

        @app.get("/v1/blobs/{digest}")
        def blob(digest: str):
            if digest in self.blobs:
                return Response(self.blobs[digest], media_type="application/octet-stream")
            if self.blob is None:
                return Response(CONFIG, media_type="application/octet-stream")

            def endless():
                for _ in range(64):  # 64 MiB unless the client hangs up earlier
                    self.blob_sent += len(self.blob)
                    yield self.blob

            return StreamingResponse(endless(), media_type="application/octet-stream")

        @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
        def anything(path: str, request: Request):
            answer = self.answers.get(path, {"error": "AdapterNotFoundError", "detail": "no"})
            if isinstance(answer, Response):
                return answer
            return JSONResponse(answer, status_code=200 if path in self.answers else 404)

        return app


@pytest.fixture
def hostile(serve):
    h = Hostile()
    with serve(h.app()) as srv:
        h.url = srv.url
        yield h


def snapshot(root: Path) -> dict[str, bytes | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = Path(p).read_bytes()
    return out


@pytest.fixture
def victim(lr_home):
    """Files outside the client's checkout folder that a hostile answer aims at."""
    v = lr_home.home / "victim"
    v.mkdir(parents=True)
    (v / "precious.txt").write_text("keep me")
    (lr_home.home / "elsewhere").mkdir()
    return v


HOSTILE_VERSIONS = {
    "digest traversal": good_version(digest="sha256:../../victim"),
    "digest absolute": good_version(digest="sha256:/etc"),
    "digest uppercase": good_version(digest="sha256:" + "A" * 64),
    "digest newline": good_version(digest="sha256:" + "a" * 64 + "\n"),
    "digest not of the files": good_version(digest="sha256:" + "a" * 64),
    "file path traversal": good_version(
        files=[{"path": "../../elsewhere/evil.txt", "digest": CONFIG_DIGEST, "size": 29}]
    ),
    "file path absolute": good_version(
        files=[{"path": "/tmp/evil.txt", "digest": CONFIG_DIGEST, "size": 29}]
    ),
    "file digest traversal": good_version(
        files=[{"path": "a.json", "digest": "sha256:../../../admin", "size": 29}]
    ),
    "file size negative": good_version(
        files=[{"path": "a.json", "digest": CONFIG_DIGEST, "size": -1}]
    ),
    "file size huge": good_version(
        files=[{"path": "a.json", "digest": CONFIG_DIGEST, "size": 1 << 60}]
    ),
    "file size over the blob limit": good_version(
        files=[{"path": "a.json", "digest": CONFIG_DIGEST, "size": (4 << 30) + 1}]
    ),
    "routing examples over the limit": good_version(routing_examples=["x"] * 10_001),
    "routing example too long": good_version(routing_examples=["x" * 4097]),
    "duplicate paths": good_version(
        files=[{"path": "a.json", "digest": CONFIG_DIGEST, "size": 29}] * 2
    ),
    "too many files": good_version(
        files=[{"path": f"f{i}", "digest": CONFIG_DIGEST, "size": 29} for i in range(5000)]
    ),
    "version zero": good_version(version=0),
    "version negative": good_version(version=-1),
    "version string": good_version(version="1"),
    "version bool": good_version(version=True),
    "name newline": good_version(name="legal\n"),
    "name traversal": good_version(name="../legal"),
    "other adapter": good_version(name="other"),
    "other version": good_version(version=2),
    "alias newline": good_version(aliases=["prod\n"]),
    "not an object": ["legal"],
    "missing fields": {"name": "legal"},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_VERSIONS))
def test_hostile_version_answers_are_refused(hostile, victim, lr_home, case):
    hostile.answers["resolve"] = HOSTILE_VERSIONS[case]
    client = RemoteRegistry(hostile.url, limits=Limits(max_manifest_files=1000))
    before = snapshot(lr_home.home)
    with pytest.raises(InvalidResponseError, match=r"registry http://127\.0\.0\.1:\d+ answered"):
        client.local_path("legal@1")
    with pytest.raises(InvalidResponseError):
        client.pull("legal@1", lr_home.home / "pulled")
    assert (victim / "precious.txt").read_text() == "keep me"
    assert snapshot(lr_home.home) == before  # nothing written, nothing removed


def test_good_answer_is_used(hostile, lr_home, tmp_path):
    """A well-formed answer naming a valid adapter is checked out (the validator too passes)."""
    from loraroute.registry.blobs import sha256_file
    from loraroute.registry.testing import write_lora_folder

    src = write_lora_folder(tmp_path / "src")
    files = []
    for f in sorted(src.iterdir()):
        digest, size = sha256_file(f)
        hostile.blobs[digest] = f.read_bytes()
        files.append({"path": f.name, "digest": digest, "size": size})
    answer = good_version(files=files)
    hostile.answers["resolve"] = answer
    client = RemoteRegistry(hostile.url)
    folder = client.local_path("legal@1")
    assert folder.parent == client.checkout_dir and (folder / "adapter_config.json").is_file()
    assert folder.name == answer["digest"].split(":")[1]


def test_a_well_formed_answer_that_is_no_adapter_is_refused(hostile, lr_home):
    hostile.answers["resolve"] = good_version()  # adapter_config.json alone
    client = RemoteRegistry(hostile.url)
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        client.local_path("legal@1")
    # nothing kept: no checkout, no temp folder, no file anywhere under home
    assert not [p for p in lr_home.home.rglob("*") if p.is_file()]
    assert not list(client.checkout_dir.iterdir())


@pytest.mark.parametrize(
    "path, answer, call",
    [
        ("versions", [good_version(), good_version(digest="sha256:../x")], "list"),
        ("versions", {"not": "a list"}, "list"),
        ("serving", [good_version(name="x\n")], "serving"),
        ("revision", {"revision": ["x"]}, "revision"),
        ("revision", {"revision": "x" * 10_000}, "revision"),
        ("model-card", {"model_card": 5}, "model_card"),
        ("model-card", {"model_card": "x" * (2 << 20)}, "model_card"),
        ("gc", {"dry_run": False, "removed": ["../x"], "bytes": 1}, "gc"),
        ("gc", {"removed": [], "bytes": -1}, "gc"),
        ("verify", {"versions": "many", "blobs": 0, "problems": []}, "verify"),
    ],
)
def test_hostile_answers_of_other_calls_refused(hostile, path, answer, call):
    hostile.answers[path] = answer
    client = RemoteRegistry(hostile.url)
    fn = getattr(client, call)
    with pytest.raises(InvalidResponseError, match=path):
        fn("legal") if call == "model_card" else fn()


def test_oversized_answer_refused(hostile):
    hostile.answers["versions"] = [good_version()] * 2000
    client = RemoteRegistry(hostile.url, limits=Limits(max_response_bytes=64 * 1024))
    with pytest.raises(InvalidResponseError, match="65536"):
        client.list()


def test_non_json_answer_refused(hostile):
    hostile.answers["revision"] = Response(b"<html>proxy login</html>", media_type="text/html")
    with pytest.raises(InvalidResponseError, match="JSON"):
        RemoteRegistry(hostile.url).revision()


def test_blob_longer_than_declared_is_cut_off(hostile, lr_home):
    hostile.answers["resolve"] = good_version()
    hostile.blob = b"x" * (1 << 20)
    client = RemoteRegistry(hostile.url)
    with pytest.raises(IntegrityError, match="adapter_config.json"):
        client.pull("legal@1", lr_home.home / "pulled")
    assert not (lr_home.home / "pulled").exists()
    assert not list(lr_home.home.glob(".pulled*"))
    # the client hung up after the declared 29 bytes, not after the 64 MiB on offer
    assert hostile.blob_sent < 32 << 20


@pytest.mark.parametrize(
    "body",
    [
        {"error": ["RegistryError"], "detail": "x"},
        {"error": "LoraRouteError", "detail": "x"},
        {"error": "RegistryError", "detail": {"nested": "x"}},
        ["not", "an", "object"],
        {"error": "RegistryError", "detail": "\x1b[31mred\x1b[0m" + "y" * 100_000},
    ],
)
def test_hostile_error_bodies_give_clear_errors(hostile, body):
    hostile.answers["revision"] = JSONResponse(body, status_code=400)
    with pytest.raises(RegistryError) as info:
        RemoteRegistry(hostile.url).revision()
    message = str(info.value)
    assert "\x1b" not in message and len(message) < 4000
    assert isinstance(info.value, RemoteError) or type(info.value) is RegistryError


def test_error_answer_is_shown_but_cannot_pick_any_class(hostile):
    hostile.answers["revision"] = JSONResponse(
        {"error": "AdapterNotFoundError", "detail": json.dumps({"x": 1})}, status_code=404
    )
    from loraroute.registry import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError, match="x"):
        RemoteRegistry(hostile.url).revision()


GOOD_EVAL = {
    "dataset": "dev",
    "dataset_digest": "sha256:" + "ab" * 32,
    "metric": "accuracy",
    "value": 0.8,
    "ref": "legal@1",
    "created_at": "2025-01-01T00:00:00+00:00",
}
GOOD_GATE = {
    "name": "legal",
    "alias": "prod",
    "candidate": 2,
    "holder": 1,
    "tolerance": 0.01,
    "verdict": "passed",
}


@pytest.mark.parametrize(
    "path, answer, call",
    [
        ("evals", [{**GOOD_EVAL, "ref": "other@1"}], lambda c: c.evals("legal")),
        ("evals", [{**GOOD_EVAL, "value": "high"}], lambda c: c.evals("legal")),
        ("evals", [{**GOOD_EVAL, "metric": "a\nb"}], lambda c: c.evals("legal@1")),
        ("evals", [{**GOOD_EVAL, "dataset_digest": "../x"}], lambda c: c.evals("legal")),
        ("evals", {"not": "a list"}, lambda c: c.evals("legal")),
        ("gate", {**GOOD_GATE, "name": "other"}, lambda c: c.gate_check("legal", 2)),
        ("gate", {**GOOD_GATE, "tolerance": -1}, lambda c: c.gate_check("legal", 2)),
        ("gate", {**GOOD_GATE, "holder": "1; drop"}, lambda c: c.gate_check("legal", 2)),
        ("promotions", [{"name": "legal"}], lambda c: c.promotions("legal")),
    ],
)
def test_hostile_answers_about_evals_and_the_gate_refused(hostile, path, answer, call):
    hostile.answers[path] = answer
    with pytest.raises(InvalidResponseError, match=path):
        call(RemoteRegistry(hostile.url))


def test_well_formed_eval_answers_are_used(hostile):
    hostile.answers["evals"] = [GOOD_EVAL]
    hostile.answers["gate"] = GOOD_GATE
    client = RemoteRegistry(hostile.url)
    (r,) = client.evals("legal")
    assert (r.ref, r.metric, r.value, r.created_at.year) == ("legal@1", "accuracy", 0.8, 2025)
    assert client.gate_check("legal", 2).verdict == "passed"
