"""One contract for every blob store (a folder, an S3 bucket on a moto server): bytes stored
under their digest only when they hash to it, read back as stored, damage caught, leftovers of
interrupted writes cleaned, and nothing of the store's location or credentials in messages."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from loraroute.registry import IntegrityError, InvalidRequestError, StorageError
from loraroute.registry.blobs import BlobStore, LocalBlobStore, open_blob_store
from loraroute.registry.blobs.s3 import S3BlobStore, parse_s3_url

MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Damage:
    """Change a stored blob behind the store's back (a disk or an object store going bad)."""

    def __init__(self, store: BlobStore, raw=None) -> None:
        self.store, self.raw = store, raw

    def flip_byte(self, digest: str, at: int = 7) -> None:
        if isinstance(self.store, LocalBlobStore):
            path = self.store.path(digest)
            data = bytearray(path.read_bytes())
            data[at] ^= 0x01
            path.write_bytes(bytes(data))
            return
        client, bucket, _ = self.raw
        key = self.store.key(digest)
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[at] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


@pytest.fixture(params=["local", "s3"])
def kind(request):
    return request.param


@pytest.fixture
def store(kind, tmp_path, request):
    if kind == "local":
        s = open_blob_store(tmp_path / "blobs")
        yield s, Damage(s)
        return
    settings = request.getfixturevalue("s3_settings")
    s = open_blob_store(settings.blob_store, settings=settings, work_dir=tmp_path / "work")
    yield s, Damage(s, request.getfixturevalue("s3_raw"))
    s.close()


def test_put_and_read_back(store):
    s, _ = store
    data = os.urandom(300_000)
    digest, size = s.put_chunks([data[:1000], data[1000:]])
    assert (digest, size) == (digest_of(data), len(data))
    assert s.has(digest) and s.size(digest) == len(data)
    assert b"".join(s.iter_chunks(digest)) == data
    assert s.read(digest, 10) == data[:10]
    assert s.verify(digest) is None
    assert [b.digest for b in s.list_blobs()] == [digest]
    again = s.put_chunks([data], expected=digest)  # stored once; the same answer
    assert again == (digest, len(data)) and len(list(s.list_blobs())) == 1


def test_large_blobs_go_up_in_parts(store, kind, tmp_path):
    s, _ = store
    data = os.urandom(11 * MiB + 123)  # 3 parts of 5 MiB (the S3 test part size)
    src = tmp_path / "big.safetensors"
    src.write_bytes(data)
    digest, size = s.put_file(src)
    assert digest == digest_of(data) and size == len(data)
    assert hashlib.sha256(b"".join(s.iter_chunks(digest))).hexdigest() == digest[7:]
    if kind == "s3":
        client, bucket, _ = store[1].raw
        etag = client.head_object(Bucket=bucket, Key=s.key(digest))["ETag"]
        assert etag.strip('"').endswith("-3")  # a multipart object of 3 parts
    # streamed with the digest known (an HTTP upload): parts as they come
    other = os.urandom(6 * MiB)
    w = s.writer(digest_of(other))
    for i in range(0, len(other), 100_000):
        w.write(other[i : i + 100_000])
    assert w.commit() == (digest_of(other), len(other))
    assert s.verify(digest_of(other)) is None


@pytest.mark.parametrize("size", [1000, 6 * MiB])
def test_wrong_bytes_never_land_under_a_digest(store, size):
    s, _ = store
    data = os.urandom(size)
    claimed = digest_of(b"something else")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        s.put_chunks([data], expected=claimed)
    assert not s.has(claimed) and not s.has(digest_of(data))
    assert list(s.list_blobs()) == []
    assert s.clean_tmp(0, dry_run=True) == (0, 0)  # the upload was aborted, not left


def test_a_flipped_byte_is_caught(store, kind, tmp_path):
    s, damage = store
    data = os.urandom(50_000)
    digest, _ = s.put_chunks([data])
    damage.flip_byte(digest)
    assert "corrupted" in s.verify(digest)
    assert digest_of(b"".join(s.iter_chunks(digest))) != digest  # as stored: readers hash
    if kind == "s3":  # a download for the validator is checked on the way
        with pytest.raises(IntegrityError, match="corrupted"), s.as_files({"w": digest}, tmp_path):
            pass


def test_missing_blobs(store):
    s, _ = store
    digest = digest_of(b"never stored")
    assert s.size(digest) is None and not s.has(digest)
    assert "missing" in s.verify(digest)
    with pytest.raises(FileNotFoundError):
        b"".join(s.iter_chunks(digest))


def test_delete_and_list(store):
    s, _ = store
    digests = [s.put_chunks([os.urandom(100)])[0] for _ in range(3)]
    assert sorted(b.digest for b in s.list_blobs()) == sorted(digests)
    s.delete(digests[:2] + [digest_of(b"absent")])
    assert [b.digest for b in s.list_blobs()] == [digests[2]]


def test_interrupted_writes_are_cleaned(store, kind):
    s, _ = store
    w = s.writer(digest_of(b"x" * (6 * MiB)))
    w.write(b"x" * (6 * MiB))  # one part sent (S3), or a temp file written (local)
    # the writer's process dies here: no commit, no abort
    if kind == "local":  # moto dates every multipart upload 2010-11-10: S3 ones look old
        assert s.clean_tmp(3600) == (0, 0)  # too young
    n, size = s.clean_tmp(0, dry_run=True)
    assert n == 1 and size >= 5 * MiB
    assert s.clean_tmp(0) == (n, size)
    assert s.clean_tmp(0) == (0, 0)
    assert list(s.list_blobs()) == []


def test_as_files_gives_local_files(store, tmp_path):
    s, _ = store
    a, _ = s.put_chunks([b"alpha"])
    b, _ = s.put_chunks([b"beta"])
    with s.as_files({"a.txt": a, "b.txt": b}, tmp_path / "work") as files:
        assert files["a.txt"].read_bytes() == b"alpha" and files["b.txt"].read_bytes() == b"beta"
    assert not any((tmp_path / "work").glob("lr-blobs-*"))  # downloads removed afterwards


def test_bad_store_urls_are_refused():
    for bad in (
        "s3://Bad_Bucket/x",
        "s3://key:secret@bucket/x",
        "s3://bucket:9000/x",
        "s3://bucket/x?versionId=1",
        "s3://bucket/a//b",
        "s3://bucket/../x",
    ):
        with pytest.raises(InvalidRequestError) as e:
            parse_s3_url(bad)
        assert "secret" not in str(e.value)
    with pytest.raises(InvalidRequestError, match="gs.*not supported"):
        open_blob_store("gs://bucket/x")
    assert parse_s3_url("s3://team-adapters/prod/eu") == ("team-adapters", "prod/eu/")
    assert parse_s3_url("s3://team-adapters") == ("team-adapters", "")
    assert open_blob_store(f"file://{Path('/tmp/x')}").location == "/tmp/x"


def test_part_size_below_s3_minimum_is_refused(s3_settings):
    with pytest.raises(InvalidRequestError, match="5MiB"):
        S3BlobStore("bucket", part_size=1 << 20)


def test_storage_errors_name_no_secret(moto_server, tmp_path):
    closed = f"http://127.0.0.1:{_closed_port()}"
    s = S3BlobStore(
        "lr-nowhere",
        "p",
        endpoint_url=closed,
        region="us-east-1",
        access_key_id="AKIA-LEAK-ME",
        secret_access_key="secret-do-not-leak",
        attempts=1,
        work_dir=tmp_path,
    )
    with pytest.raises(StorageError) as e:
        s.put_chunks([b"data"])
    text = str(e.value)
    assert "secret-do-not-leak" not in text and "AKIA-LEAK-ME" not in text
    assert "s3://lr-nowhere/p/" in text and "LORAROUTE_S3_" in text
    hide = s.private_strings()
    assert hide["secret-do-not-leak"] == "***" and closed in hide
    assert "secret-do-not-leak" not in repr(s)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_WITHOUT_BOTO3 = """
import sys
sys.modules["boto3"] = None  # as if it were not installed
import loraroute.registry as r
reg = r.open_registry(sys.argv[1])
assert "boto3" not in sys.modules or sys.modules["boto3"] is None
try:
    r.open_blob_store("s3://bucket/x")
except ImportError as e:
    print(e)
"""


def test_the_registry_needs_boto3_only_for_s3(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_BOTO3, f"sqlite:///{tmp_path / 'r.db'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "LORAROUTE_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'loraroute[s3]'" in out.stdout
