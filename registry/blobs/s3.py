"""Content-addressed blobs in an S3-compatible bucket: ``<prefix>sha256/<ab>/<hex>``.

boto3, not s3fs: the registry is synchronous and needs S3's own primitives (multipart uploads
it completes only once the streamed bytes hash to their key, aborts of abandoned uploads,
batched deletes, in-place copies that refresh an object's age for gc), which boto3 exposes
one to one; s3fs wraps them in an async filesystem (aiobotocore, an event loop in a thread)
that pins botocore versions and hides the upload id the writer must own.

A write streams the bytes into a multipart upload (``part_size`` bytes a part; one
``PutObject`` carrying the sha256 for S3 to check when the blob is smaller) while hashing
them, and completes it only when the digest matches: an object under a digest key is never
partial and never holds other bytes, even if the writer is killed (its upload stays invisible
until ``gc`` aborts it). Reads are hashed by the reader, like local blobs.

Example::

    >>> store = S3BlobStore("team-adapters", "prod/", endpoint_url="http://127.0.0.1:9000")  # doctest: +SKIP
    >>> store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
    ('sha256:9f3c...', 4194304)
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from loraroute.redact import redact_text
from loraroute.settings import Settings

from ..errors import IntegrityError, InvalidRequestError, StorageError
from .base import (
    CHUNK,
    BlobStore,
    BlobWriter,
    StoredBlob,
    check_digest,
    digest_mismatch,
    sha256_file,
)
from .local import clean_folder

logger = logging.getLogger(__name__)

MIN_PART = 5 << 20  # S3's smallest part (all but the last)
MAX_PARTS = 10_000
TOUCH_AFTER = 60.0  # an already-stored blob written again is re-dated if older than this
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/\-]*")
_HEX = re.compile(r"[0-9a-f]{64}")


def _boto() -> tuple[Any, Any, Any]:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise ImportError("an s3:// blob store needs boto3: pip install 'loraroute[s3]'") from exc
    return boto3, Config, (BotoCoreError, ClientError)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``."""
    parts = urlsplit(url)
    bucket = parts.hostname or ""
    if (
        parts.scheme != "s3"
        or parts.username is not None
        or parts.port is not None
        or parts.query
        or parts.fragment
        or parts.netloc != bucket
        or not _BUCKET.fullmatch(bucket)
    ):
        raise InvalidRequestError(
            f"blob store {redact_text(url)!r} is not a bucket URL: use s3://bucket/prefix "
            f"(bucket: 3-63 lowercase letters, digits, '.', '-'); give the endpoint, region "
            f"and credentials as LORAROUTE_S3_* settings, never inside the URL"
        )
    prefix = parts.path.strip("/")
    if not _PREFIX.fullmatch(prefix) or "//" in prefix or ".." in prefix.split("/"):
        raise InvalidRequestError(
            f"blob store prefix {prefix!r} is not allowed: use letters, digits and "
            f"!_.*'()-/ separated by single slashes"
        )
    return bucket, prefix + "/" if prefix else ""


def _secret(value: SecretStr | str | None) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


class S3BlobStore(BlobStore):
    """Blobs by digest in ``bucket`` under ``prefix``, through boto3.

    ``endpoint_url`` points at an S3-compatible server (MinIO, Ceph, R2, moto; path-style
    addressing); None means AWS. Credentials not given come from boto3's own chain
    (``AWS_*`` variables, ``~/.aws``, instance roles). ``work_dir`` holds temp files;
    ``attempts`` bounds boto3's retries of a failed request.
    """

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: SecretStr | str | None = None,
        secret_access_key: SecretStr | str | None = None,
        session_token: SecretStr | str | None = None,
        part_size: int = 8 << 20,
        work_dir: Path | None = None,
        attempts: int = 5,
    ) -> None:
        boto3, Config, self._errors = _boto()
        self.bucket, self.prefix = parse_s3_url(f"s3://{bucket}/{prefix}")
        if part_size < MIN_PART:
            raise InvalidRequestError(
                f"S3 part size {part_size} is below S3's minimum of {MIN_PART} bytes (5MiB); "
                f"raise LORAROUTE_S3_PART_SIZE"
            )
        self.part_size = int(part_size)
        self.endpoint_url = endpoint_url or None
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self._secrets = [
            s
            for s in (_secret(access_key_id), _secret(secret_access_key), _secret(session_token))
            if s
        ]
        session = boto3.session.Session(
            aws_access_key_id=_secret(access_key_id),
            aws_secret_access_key=_secret(secret_access_key),
            aws_session_token=_secret(session_token),
            region_name=region or None,
        )
        config = Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)

    @classmethod
    def from_url(cls, url: str, settings: Settings, *, work_dir: Path | None = None) -> S3BlobStore:
        """The store of ``s3://bucket/prefix`` with the ``s3_*`` settings."""
        bucket, prefix = parse_s3_url(url)
        return cls(
            bucket,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            session_token=settings.s3_session_token,
            part_size=int(settings.s3_part_size),
            work_dir=work_dir,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location!r})"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, digest: str) -> str:
        hexd = check_digest(digest).split(":", 1)[1]
        return f"{self.prefix}sha256/{hexd[:2]}/{hexd}"

    # -- errors ----------------------------------------------------------------------------
    def _failed(self, what: str, exc: BaseException) -> StorageError:
        code = ""
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        detail = redact_text(str(exc))
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StorageError(
            f"the blob store {self.location} failed to {what}"
            f"{f' ({code})' if code else ''}: {detail}; check LORAROUTE_BLOB_STORE and the "
            f"LORAROUTE_S3_* settings (endpoint, region, credentials) and that the store is "
            f"reachable"
        )

    @staticmethod
    def _missing(exc: BaseException) -> bool:
        response = getattr(exc, "response", None)
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
        return code in ("404", "NoSuchKey", "NotFound")

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except self._errors as e:
            raise self._failed(what, e) from None

    # -- reading ---------------------------------------------------------------------------
    def stat(self, digest: str) -> tuple[int, float] | None:
        """``(size, last modified)`` of a stored blob, None if absent."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except self._errors as e:
            if self._missing(e):
                return None
            raise self._failed(f"look up blob {digest}", e) from None
        return int(head["ContentLength"]), head["LastModified"].timestamp()

    def size(self, digest: str) -> int | None:
        st = self.stat(digest)
        return None if st is None else st[0]

    def iter_chunks(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        key = self.key(digest)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self._errors as e:
            if self._missing(e):
                raise FileNotFoundError(f"blob {digest} is missing from the blob store") from None
            raise self._failed(f"read blob {digest}", e) from None
        try:
            yield from body.iter_chunks(chunk)
        except self._errors as e:
            if type(e).__name__ == "FlexibleChecksumError":  # S3's own checksum disagreed
                raise IntegrityError(
                    f"blob {digest} read from {self.location} fails the store's checksum; "
                    f"the stored object is corrupted (run `adapters verify`)"
                ) from None
            raise self._failed(f"read blob {digest}", e) from None
        finally:
            body.close()

    def list_blobs(self) -> Iterator[StoredBlob]:
        base = f"{self.prefix}sha256/"
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    sub, _, hexd = obj["Key"][len(base) :].partition("/")
                    if _HEX.fullmatch(hexd) and sub == hexd[:2]:
                        yield StoredBlob(
                            f"sha256:{hexd}", int(obj["Size"]), obj["LastModified"].timestamp()
                        )
        except self._errors as e:
            raise self._failed("list blobs", e) from None

    # -- writing ---------------------------------------------------------------------------
    def writer(self, expected: str | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, expected)

    def put_file(self, src: Path) -> tuple[str, int]:
        # hash first, so the upload streams to its final key and is checked as it goes
        digest, _ = sha256_file(src)
        with open(src, "rb") as f:
            return self.put_chunks(iter(lambda: f.read(CHUNK), b""), digest)

    def touch(self, digest: str, modified: float) -> None:
        """Re-date a blob written again (an in-place copy), so gc's grace period protects it
        while the version that now uses it is committed."""
        if time.time() - modified < TOUCH_AFTER:
            return
        key = self.key(digest)
        try:
            self._client.copy(
                {"Bucket": self.bucket, "Key": key},
                self.bucket,
                key,
                ExtraArgs={
                    "MetadataDirective": "REPLACE",
                    "Metadata": {"lr-touched": str(int(time.time()))},
                    "ContentType": "application/octet-stream",
                },
            )
        except self._errors as e:
            raise self._failed(f"refresh blob {digest}", e) from None

    def delete(self, digests: Iterable[str]) -> None:
        keys = [self.key(d) for d in digests]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            out = self._call(
                "delete blobs",
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            errors = [e for e in out.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise StorageError(
                    f"the blob store {self.location} refused to delete {len(errors)} blob(s) "
                    f"({errors[0].get('Code')}: {errors[0].get('Message')}); check the "
                    f"credentials' permissions (s3:DeleteObject)"
                )

    def clean_tmp(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Abort multipart uploads that killed writers left (older than ``older_than``
        seconds; their parts are billed storage) and remove old local temp files."""
        n = size = 0
        if self.work_dir is not None:
            n, size = clean_folder(self.work_dir, older_than, dry_run=dry_run)
        now = time.time()
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"
            )
            for page in pages:
                for up in page.get("Uploads", ()):
                    if now - up["Initiated"].timestamp() < older_than:
                        continue
                    n += 1
                    parts = self._client.get_paginator("list_parts").paginate(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    size += sum(int(p["Size"]) for pg in parts for p in pg.get("Parts", ()))
                    if not dry_run:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
        except self._errors as e:
            raise self._failed("clean interrupted uploads", e) from None
        return n, size

    def private_strings(self) -> dict[str, str]:
        hide = {self.location: "the blob store", self.location.rstrip("/"): "the blob store"}
        if self.endpoint_url:
            hide[self.endpoint_url] = "the blob store"
            hide[self.endpoint_url.rstrip("/")] = "the blob store"
        if self.work_dir is not None:
            hide[str(self.work_dir)] = "<store>"
        for secret in self._secrets:
            hide[secret] = "***"
        return hide

    def close(self) -> None:
        self._client.close()


class S3BlobWriter(BlobWriter):
    """Stream one blob into S3.

    With a known digest the bytes go straight into a multipart upload to their final key,
    completed only if they hash to it (aborted otherwise); a blob already stored is only
    hashed (and re-dated). Without one they are spooled (memory, then a temp file) and
    uploaded the same way once the digest is known.
    """

    def __init__(self, store: S3BlobStore, expected: str | None) -> None:
        self.store = store
        self.expected = check_digest(expected) if expected is not None else None
        self.size = 0
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._closed = False
        self._spool: Any = None
        self._existing: tuple[int, float] | None = None
        if expected is None:
            self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed in abort)
                max_size=store.part_size, dir=str(store.work_dir) if store.work_dir else None
            )
        else:
            self._existing = store.stat(expected)

    def _part_size(self) -> int:
        # parts grow past every 1,000 so that 10,000 parts reach S3's 5 TB object limit
        return self.store.part_size * (1 + len(self._parts) // 1000)

    def write(self, block: bytes) -> None:
        if self._closed:
            raise ValueError("blob writer is closed")
        self._hash.update(block)
        self.size += len(block)
        if self._spool is not None:
            self._spool.write(block)
            return
        if self._existing is not None:
            return  # already stored: only the hash is needed
        self._buf += block
        while len(self._buf) >= self._part_size():
            n = self._part_size()
            self._upload_part(bytes(self._buf[:n]))
            del self._buf[:n]

    def _upload_part(self, data: bytes) -> None:
        store, key = self.store, self.store.key(self.expected or "")
        if self._upload_id is None:
            out = store._call(
                "start an upload",
                "create_multipart_upload",
                Bucket=store.bucket,
                Key=key,
                ContentType="application/octet-stream",
            )
            self._upload_id = out["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"a blob of more than {MAX_PARTS} parts does not fit in S3")
        out = store._call(
            "upload a part",
            "upload_part",
            Bucket=store.bucket,
            Key=key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"ETag": out["ETag"], "PartNumber": number})

    def commit(self) -> tuple[str, int]:
        if self._closed:
            raise ValueError("blob writer is closed")
        digest = "sha256:" + self._hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            self.abort()
            raise digest_mismatch(self.expected, digest, self.size)
        store = self.store
        if self._spool is not None:  # now the key is known: upload the spooled bytes
            self._spool.seek(0)
            store.put_chunks(iter(lambda: self._spool.read(CHUNK), b""), digest)
        elif self._existing is not None:
            store.touch(digest, self._existing[1])
        elif self._upload_id is not None:
            if self._buf:
                self._upload_part(bytes(self._buf))
            store._call(
                "complete an upload",
                "complete_multipart_upload",
                Bucket=store.bucket,
                Key=store.key(digest),
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None
        else:  # one request; S3 checks the body against its sha256
            raw = bytes.fromhex(digest.split(":", 1)[1])
            store._call(
                "store a blob",
                "put_object",
                Bucket=store.bucket,
                Key=store.key(digest),
                Body=bytes(self._buf),
                ContentType="application/octet-stream",
                ChecksumSHA256=base64.b64encode(raw).decode(),
            )
        self._buf = bytearray()
        self.abort()
        return digest, self.size

    def abort(self) -> None:
        self._closed = True
        self._buf = bytearray()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._upload_id is not None:
            upload, self._upload_id = self._upload_id, None
            try:
                self.store._client.abort_multipart_upload(
                    Bucket=self.store.bucket,
                    Key=self.store.key(self.expected or ""),
                    UploadId=upload,
                )
            except self.store._errors as e:  # gc aborts it later (clean_tmp)
                logger.warning("%s", self.store._failed("abort an upload", e))


__all__ = ["S3BlobStore", "S3BlobWriter", "parse_s3_url"]
