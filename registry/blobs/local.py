"""Content-addressed blobs in a folder: ``<root>/sha256/<ab>/<hex>``, each file stored once.

Writes go to a temporary file in ``<root>/tmp`` that is hashed while written, fsynced and
renamed into place, so a blob path only ever holds complete, correct bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .._perms import new_file
from .base import (
    CHUNK,
    BlobStore,
    BlobWriter,
    StoredBlob,
    check_digest,
    digest_mismatch,
    sha256_file,
)

logger = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_folder(folder: Path, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
    """Remove the files and folders directly in ``folder`` older than ``older_than`` seconds;
    return how many and their bytes (``dry_run``: only count)."""
    if not folder.is_dir():
        return 0, 0
    now = time.time()
    n = size = 0
    for p in folder.iterdir():
        try:
            st = p.lstat()
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        if now - st.st_mtime < older_than:
            continue
        n += 1
        if p.is_dir() and not p.is_symlink():
            size += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            if not dry_run:
                shutil.rmtree(p, ignore_errors=True)
        else:
            size += st.st_size
            if not dry_run:
                p.unlink(missing_ok=True)
    return n, size


class LocalBlobStore(BlobStore):
    """Blobs by digest under ``root``.

    Example::

        >>> store = LocalBlobStore(Path("/tmp/blobs"))  # doctest: +SKIP
        >>> digest, size = store.put_file(Path("adapter_model.safetensors"))  # doctest: +SKIP
    """

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, digest: str) -> Path:
        hexd = check_digest(digest).split(":", 1)[1]
        return self.root / "sha256" / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def local_file(self, digest: str) -> Path | None:
        path = self.path(digest)
        return path if path.is_file() else None

    def writer(self, expected: str | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self, expected)

    def _install(self, tmp: Path, digest: str) -> None:
        final = self.path(digest)
        if final.is_file():
            # already stored (same digest = same bytes); refresh mtime so gc's grace period
            # protects it while the version that now uses it is being committed
            os.utime(final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def iter_chunks(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(digest) as f:
            while block := f.read(chunk):
                yield block

    def verify(self, digest: str) -> str | None:
        p = self.path(digest)
        if not p.is_file():
            return f"blob {digest} is missing from the blob store"
        actual, _ = sha256_file(p)
        if actual != digest:
            return f"blob {digest} is corrupted on disk: its bytes hash to {actual}"
        return None

    def all_digests(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            for p in sorted(sub.iterdir()):
                yield f"sha256:{p.name}", p

    def list_blobs(self) -> Iterator[StoredBlob]:
        for digest, path in self.all_digests():
            try:
                st = path.stat()
            except FileNotFoundError:  # removed meanwhile
                continue
            yield StoredBlob(digest, st.st_size, st.st_mtime)

    def delete(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self.path(digest).unlink(missing_ok=True)

    def clean_tmp(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove temporary files (or folders) left by killed writers, older than
        ``older_than`` seconds; return how many and their bytes (``dry_run``: only count)."""
        return clean_folder(self.tmp_dir, older_than, dry_run=dry_run)

    def private_strings(self) -> dict[str, str]:
        return {form: "<store>" for form in (str(self.root), str(self.root.resolve()))}


class LocalBlobWriter(BlobWriter):
    """Write a blob in pieces: temp file, hashed as written, fsynced and renamed on commit."""

    def __init__(self, store: LocalBlobStore, expected: str | None) -> None:
        if expected is not None:
            check_digest(expected)
        self.store = store
        self.expected = expected
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.tmp_dir)
        new_file(fd)  # readable as the umask allows (an engine of another user reads blobs)
        self.tmp = Path(name)
        self._out: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> None:
        if self._out is None:
            raise ValueError("blob writer is closed")
        self._hash.update(block)
        self.size += len(block)
        self._out.write(block)

    def commit(self) -> tuple[str, int]:
        if self._out is None:
            raise ValueError("blob writer is closed")
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._out = None
        digest = "sha256:" + self._hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            raise digest_mismatch(self.expected, digest, self.size)
        self.store._install(self.tmp, digest)
        return digest, self.size

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self.tmp.unlink(missing_ok=True)


__all__ = ["LocalBlobStore", "LocalBlobWriter", "clean_folder", "fsync_dir"]
