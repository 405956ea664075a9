"""The blob-store interface: content-addressed bytes, keyed by their sha256 digest.

A store only ever holds complete blobs whose bytes hash to their key: writers hash what they
are given and install it under its digest only when the digest checks out (a local temp file
renamed into place, or an object-store upload completed). Readers re-hash what they read
(:func:`loraroute.registry._transfer.materialize`), so bytes changed in the store after they
were written are caught on pull, and by :meth:`BlobStore.verify`.

Implementations, one per module: :class:`~loraroute.registry.blobs.local.LocalBlobStore` (a
folder) and :class:`~loraroute.registry.blobs.s3.S3BlobStore` (an S3-compatible bucket).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._text import shown
from ..errors import IntegrityError, InvalidReferenceError
from ..refs import DIGEST_RE

CHUNK = 1 << 20


def sha256_file(path: Path, chunk: int = CHUNK) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return "sha256:" + h.hexdigest(), size


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise InvalidReferenceError(f"invalid digest {shown(digest)}: expected 'sha256:<64 hex>'")
    return digest


def digest_mismatch(expected: str, actual: str, size: int) -> IntegrityError:
    return IntegrityError(
        f"blob upload does not match its digest: expected {expected}, received {actual} "
        f"({size} bytes); the transfer was corrupted, retry it"
    )


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One blob as the store lists it (for gc): digest, size, last write (epoch seconds)."""

    digest: str
    size: int
    modified: float


class BlobWriter(ABC):
    """Write one blob in pieces; :meth:`commit` checks the digest and installs it; after a
    failed or abandoned write, :meth:`abort` leaves nothing visible behind."""

    size: int = 0

    @abstractmethod
    def write(self, block: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> tuple[str, int]:
        """Install the blob; ``(digest, size)``. IntegrityError if an expected digest differs."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written (no-op after commit)."""


class BlobStore(ABC):
    """Blobs by digest.

    Example::

        >>> store = open_blob_store("s3://team-adapters/prod")  # doctest: +SKIP
        >>> digest, size = store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
        >>> store.verify(digest) is None  # doctest: +SKIP
        True
    """

    #: ``local`` or ``s3``
    kind: str = ""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the blobs are, as messages show it (no credentials)."""

    @abstractmethod
    def size(self, digest: str) -> int | None:
        """The stored blob's size, None if it is not stored."""

    def has(self, digest: str) -> bool:
        return self.size(digest) is not None

    @abstractmethod
    def writer(self, expected: str | None = None) -> BlobWriter:
        """An incremental writer (for streamed uploads); ``commit()`` verifies and installs."""

    @abstractmethod
    def iter_chunks(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        """The stored bytes, as stored (readers hash them; see the module docstring)."""

    @abstractmethod
    def list_blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob (for gc)."""

    @abstractmethod
    def delete(self, digests: Iterable[str]) -> None:
        """Remove these blobs (missing ones are ignored)."""

    @abstractmethod
    def clean_tmp(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove leftovers of interrupted writes older than ``older_than`` seconds; return
        how many and their bytes (``dry_run``: only count)."""

    @abstractmethod
    def private_strings(self) -> dict[str, str]:
        """Strings no remote client may see (folders, endpoints, bucket URLs, credentials),
        each with the neutral label that replaces it (``loraroute.redact.Scrubber``)."""

    def put_chunks(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Store streamed bytes; verify against ``expected`` when given. Returns (digest, size)."""
        w = self.writer(expected)
        try:
            for block in chunks:
                w.write(block)
            return w.commit()
        finally:
            w.abort()

    def put_file(self, src: Path) -> tuple[str, int]:
        with open(src, "rb") as f:
            return self.put_chunks(iter(lambda: f.read(CHUNK), b""))

    def put_stream(self, stream: BinaryIO, expected: str | None = None) -> tuple[str, int]:
        return self.put_chunks(iter(lambda: stream.read(CHUNK), b""), expected)

    def read(self, digest: str, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of a blob."""
        out = bytearray()
        source = self.iter_chunks(digest, min(CHUNK, max(limit, 1)))
        try:
            for block in source:
                out += block[: limit - len(out)]
                if len(out) >= limit:
                    break
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        return bytes(out)

    def verify(self, digest: str) -> str | None:
        """``None`` if the blob is intact, else a sentence saying what is wrong."""
        if self.size(digest) is None:
            return f"blob {digest} is missing from the blob store"
        h = hashlib.sha256()
        for block in self.iter_chunks(digest):
            h.update(block)
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            return f"blob {digest} is corrupted in the blob store: its bytes hash to {actual}"
        return None

    def local_file(self, digest: str) -> Path | None:
        """A file on this machine holding the blob, if the store keeps one (else None)."""
        return None

    @contextmanager
    def as_files(
        self, files: Mapping[str, str], work_dir: Path | None = None
    ) -> Iterator[dict[str, Path]]:
        """``{name: digest}`` -> ``{name: local file}`` for code that reads files (the
        validator); blobs not kept locally are downloaded, verified, into a temp folder
        (inside ``work_dir``) removed afterwards."""
        out = {name: self.local_file(digest) for name, digest in files.items()}
        if all(path is not None for path in out.values()):
            yield {name: path for name, path in out.items() if path is not None}
            return
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="lr-blobs-", dir=work_dir) as tmp:
            got: dict[str, Path] = {}
            for name, digest in files.items():
                local = out[name]
                if local is None:
                    local = Path(tmp) / check_digest(digest).split(":", 1)[1]
                    if not local.exists():
                        _download(self, digest, local)
                got[name] = local
            yield got

    def close(self) -> None:  # noqa: B027 (optional: only stores with connections close)
        """Release connections (a no-op for folders)."""


def _download(store: BlobStore, digest: str, target: Path) -> None:
    h = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for block in store.iter_chunks(digest):
            h.update(block)
            out.write(block)
    actual = "sha256:" + h.hexdigest()
    if actual != digest:
        raise IntegrityError(
            f"blob {digest} read from the blob store hashes to {actual}; the stored object is "
            f"corrupted (run `adapters verify`)"
        )


__all__ = [
    "CHUNK",
    "BlobStore",
    "BlobWriter",
    "StoredBlob",
    "check_digest",
    "digest_mismatch",
    "sha256_file",
]
