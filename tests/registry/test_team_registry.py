"""The team registry: PostgreSQL for metadata, an S3 bucket for blobs (moto's server on
loopback), and ``adapters registry serve`` in front, as a real process.

Goal: 8 concurrent pushers and pullers, 200 operations, zero lost or corrupt versions; a
flipped byte in a stored object caught on pull.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from loraroute.cli import main
from loraroute.registry import IntegrityError, Limits, RegistryError, RemoteRegistry, open_registry
from loraroute.registry.auth import create_token
from loraroute.registry.blobs import sha256_file
from loraroute.registry.blobs.s3 import S3BlobStore
from loraroute.registry.testing import write_lora_folder

from .conftest import (
    PG_PASSWORD,
    S3_KEY_ID,
    S3_SECRET,
    free_port,
    make_s3_settings,
    raw_client,
    wait_up,
)

MiB = 1 << 20
FP = "sha256:" + "0" * 64


def _env(settings, pg_url: str) -> dict[str, str]:
    return {
        "LORAROUTE_HOME": str(settings.home),
        "LORAROUTE_REGISTRY": pg_url,
        "LORAROUTE_BLOB_STORE": settings.blob_store,
        "LORAROUTE_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "LORAROUTE_S3_REGION": settings.s3_region,
        "LORAROUTE_S3_ACCESS_KEY_ID": S3_KEY_ID,
        "LORAROUTE_S3_SECRET_ACCESS_KEY": S3_SECRET,
        "LORAROUTE_S3_PART_SIZE": "5MiB",
    }


@pytest.fixture(scope="module")
def team(moto_server, tmp_path_factory, service_missing):
    """``adapters registry serve`` over a fresh PostgreSQL database (with a password in its
    URL) and a fresh bucket, with read/write/admin tokens; one for the module (each test uses
    its own adapter names)."""
    from loraroute.registry.testing import PostgresUnavailable, temporary_postgres

    try:
        pg = temporary_postgres()
        url = pg.__enter__()
    except PostgresUnavailable as exc:
        service_missing(str(exc))
    pg_url = make_url(url).set(password=PG_PASSWORD).render_as_string(hide_password=False)
    settings = make_s3_settings(moto_server, tmp_path_factory.mktemp("home"))
    reg = open_registry(pg_url, settings=settings)
    tokens = {scope: create_token(reg, scope) for scope in ("read", "write", "admin")}
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loraroute.cli", "registry", "serve", "--port", str(port)],
            env={**os.environ, **_env(settings, pg_url)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    srv = f"http://127.0.0.1:{port}"
    try:
        wait_up(srv)
        yield SimpleNamespace(
            url=srv,
            reg=reg,
            tokens=tokens,
            log=log,
            raw=raw_client(settings),
            settings=settings,
            pg_url=pg_url,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reg.close()
        pg.__exit__(None, None, None)


def folder(root: Path, tag: str, seed: int) -> Path:
    """A distinct adapter: its own weights and a model card naming ``tag``."""
    f = write_lora_folder(root / tag, seed=seed)
    (f / "README.md").write_text(f"# {tag}\n")
    return f


def test_8_pushers_and_pullers_200_operations_lose_and_corrupt_nothing(team, tmp_path):
    ops, workers = 200, 8
    names = ["goal-legal", "goal-cooking", "goal-space", "goal-tech"]
    pushed: list[tuple[str, str, str]] = []  # (ref, digest, tag) as each push returned
    lock = threading.Lock()
    errors: list[BaseException] = []
    counts = {"push": 0, "pull": 0}

    def work(w: int) -> None:
        rng = random.Random(w)
        client = RemoteRegistry(team.url, token=team.tokens["write"])
        try:
            for i in range(ops // workers):
                with lock:
                    known = list(pushed)
                if not known or rng.random() < 0.5:
                    tag = f"w{w}-{i}"
                    v = client.push(
                        folder(tmp_path / "src", tag, seed=1000 * w + i),
                        rng.choice(names),
                        base_fingerprint=FP,
                        base_model_id="tiny",
                    )
                    with lock:
                        pushed.append((v.ref, v.digest, tag))
                        counts["push"] += 1
                else:
                    ref, digest, tag = rng.choice(known)
                    out = client.pull(ref, tmp_path / "pulled" / f"{w}-{i}")
                    assert (out / "README.md").read_text() == f"# {tag}\n"
                    v = client.resolve(ref)
                    assert v.digest == digest
                    for f in v.files:
                        assert sha256_file(out / f.path) == (f.digest, f.size)
                    with lock:
                        counts["pull"] += 1
        except BaseException as e:  # reported below, with the others
            errors.append(e)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.perf_counter() - started
    assert not errors, errors[:3]
    assert counts["push"] + counts["pull"] == ops and counts["pull"] > 50
    print(f"\n{ops} operations ({counts}) by {workers} clients in {elapsed:.1f} s")

    # nothing lost: every push is a version, numbered 1..n per name, holding what was pushed
    reader = RemoteRegistry(team.url, token=team.tokens["read"])
    listed = {v.ref: v for v in reader.list() if v.name in names}
    assert sorted(listed) == sorted(ref for ref, _, _ in pushed)
    for name in names:
        numbers = sorted(v.version for v in listed.values() if v.name == name)
        assert numbers == list(range(1, len(numbers) + 1))
    for ref, digest, _ in pushed:
        assert listed[ref].digest == digest
    # nothing corrupt: every stored object hashes to its key, and no upload is left half done
    for ref in listed:
        assert team.reg.verify(ref).ok, ref
    stored = {b.digest for b in team.reg.blobs.list_blobs()}
    assert {f.digest for v in listed.values() for f in v.files} <= stored
    assert team.reg.blobs.clean_tmp(0, dry_run=True) == (0, 0)


def test_a_flipped_byte_in_a_stored_object_is_caught_on_pull(team, tmp_path, pg_password):
    client = RemoteRegistry(team.url, token=team.tokens["write"])
    v = client.push(folder(tmp_path / "src", "flip", seed=90005), "flip", base_fingerprint=FP)
    weights = next(f for f in v.files if f.path.endswith(".safetensors"))
    client_raw, bucket, _ = team.raw
    key = team.reg.blobs.key(weights.digest)
    data = bytearray(client_raw.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client_raw.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    with pytest.raises(IntegrityError, match="should hash to"):  # through the server
        client.pull(v.ref, tmp_path / "a")
    with pytest.raises(IntegrityError, match="should hash to"):  # straight from the bucket
        team.reg.pull(v.ref, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    report = team.reg.verify(v.ref)
    assert not report.ok and "corrupted" in report.problems[0]
    out = CliRunner(env=_env(team.settings, team.pg_url)).invoke(main, ["verify", v.ref])
    assert out.exit_code == 1 and "corrupted" in out.output
    assert S3_SECRET not in out.output and pg_password not in out.output
    admin = RemoteRegistry(team.url, token=team.tokens["admin"])
    admin.rm(v.ref)  # the damaged version goes; the next push of its bytes stores them anew
    admin.gc(grace_seconds=0)
    assert team.reg.blobs.size(weights.digest) is None


def test_large_blobs_travel_in_parts_through_the_server(team):
    data = os.urandom(11 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = {"authorization": f"Bearer {team.tokens['write']}"}
    chunks = (data[i : i + MiB] for i in range(0, len(data), MiB))  # streamed, chunked
    r = httpx.put(f"{team.url}/v1/blobs/{digest}", content=chunks, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    client_raw, bucket, _ = team.raw
    head = client_raw.head_object(Bucket=bucket, Key=team.reg.blobs.key(digest))
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)
    r = httpx.get(f"{team.url}/v1/blobs/{digest}", headers=headers, timeout=60)
    assert r.status_code == 200 and r.content == data
    bad = "sha256:" + hashlib.sha256(b"other").hexdigest()  # bytes that are not the digest's
    r = httpx.put(f"{team.url}/v1/blobs/{bad}", content=data[: 6 * MiB], headers=headers)
    assert r.status_code == 422 and r.json()["error"] == "IntegrityError"
    assert team.reg.blobs.size(bad) is None
    assert team.reg.blobs.clean_tmp(0, dry_run=True) == (0, 0)  # its upload was aborted


def test_gc_removes_objects_no_version_uses(team, tmp_path):
    admin = RemoteRegistry(team.url, token=team.tokens["admin"])
    keep = admin.push(folder(tmp_path / "src", "keep", seed=90001), "keep", base_fingerprint=FP)
    gone = admin.push(folder(tmp_path / "src", "gone", seed=90002), "gone", base_fingerprint=FP)
    admin.rm(gone.ref)
    report = admin.gc(grace_seconds=0)
    only_gone = {f.digest for f in gone.files} - {f.digest for f in keep.files}
    assert only_gone <= set(report.removed) and report.bytes > 0
    stored = {b.digest for b in team.reg.blobs.list_blobs()}
    assert not stored & only_gone and {f.digest for f in keep.files} <= stored
    assert admin.verify(keep.ref).ok


def test_limits_hold_on_an_object_store(pg_url, s3_settings, serve, tmp_path):
    from loraroute.registry.server import create_app

    reg = open_registry(pg_url, settings=s3_settings)
    token = create_token(reg, "write")
    limits = Limits(max_blob_bytes=64 * 1024)
    with serve(create_app(reg, limits=limits)) as srv:
        digest = "sha256:" + "0" * 64
        r = httpx.put(
            f"{srv.url}/v1/blobs/{digest}",
            content=iter([b"x" * 50_000, b"x" * 50_000]),
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 413 and "LORAROUTE_REGISTRY_MAX_BLOB_BYTES" in r.json()["detail"]
    assert list(reg.blobs.list_blobs()) == []
    big = folder(tmp_path / "src", "big", seed=90003)
    with pytest.raises(Exception, match="MAX_BLOB_BYTES"):
        open_registry(pg_url, settings=s3_settings, limits=Limits(max_blob_bytes=100)).push(
            big, "big", base_fingerprint=FP
        )
    assert list(reg.blobs.list_blobs()) == []
    reg.close()


def test_an_unreachable_store_is_a_503_that_names_nothing(pg_url, serve, tmp_path, lr_home):
    from loraroute.registry.server import create_app

    closed = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore(
        "lr-nowhere",
        "team",
        endpoint_url=closed,
        region="us-east-1",
        access_key_id=S3_KEY_ID,
        secret_access_key=S3_SECRET,
        attempts=1,
        work_dir=tmp_path,
    )
    reg = open_registry(pg_url, blob_store=store)
    token = create_token(reg, "write")
    with serve(create_app(reg)) as srv:
        h = {"authorization": f"Bearer {token}"}
        for r in (
            httpx.get(f"{srv.url}/v1/blobs/sha256:{'1' * 64}", headers=h),
            httpx.put(f"{srv.url}/v1/blobs/sha256:{'1' * 64}", content=b"x", headers=h),
        ):
            assert r.status_code == 503 and r.headers["retry-after"]
            for secret in (S3_SECRET, S3_KEY_ID, closed, "lr-nowhere", "127.0.0.1"):
                assert secret not in r.text
    reg.close()


def test_the_server_log_keeps_secrets(team, tmp_path, pg_password):
    client = RemoteRegistry(team.url, token=team.tokens["write"])
    client.push(folder(tmp_path / "src", "log", seed=90009), "logged", base_fingerprint=FP)
    text = team.log.read_text()
    assert "PUT /v1/blobs/" in text
    for secret in (S3_SECRET, S3_KEY_ID, pg_password, team.tokens["write"]):
        assert secret not in text


def test_clients_find_the_bucket_in_the_database(team, tmp_path):
    """The first open with an object store records it: a client that names none uses it,
    one that names another store (or a folder) is refused."""
    creds = team.settings.model_copy(update={"blob_store": ""})
    reg = open_registry(team.pg_url, settings=creds)
    assert reg.blobs.location == team.reg.blobs.location
    v = RemoteRegistry(team.url, token=team.tokens["write"]).push(
        folder(tmp_path / "src", "found", seed=90011), "found", base_fingerprint=FP
    )
    assert reg.pull(v.ref, tmp_path / "out").is_dir()
    reg.close()
    other = team.settings.model_copy(update={"blob_store": "s3://another-bucket/team"})
    with pytest.raises(RegistryError, match=r"are in s3://lr-.*/team/.*another-bucket"):
        open_registry(team.pg_url, settings=other)
    with pytest.raises(RegistryError, match="but a folder is configured"):
        open_registry(team.pg_url, settings=creds, blob_dir=tmp_path / "blobs")
