"""Blob stores: a small interface (:mod:`.base`) and its implementations, one per module:
a folder (:mod:`.local`) and an S3-compatible bucket (:mod:`.s3`, ``pip install
'loraroute[s3]'``), chosen by ``LORAROUTE_BLOB_STORE``.

Example::

    >>> from loraroute.registry.blobs import open_blob_store
    >>> open_blob_store("/tmp/blobs")
    LocalBlobStore('/tmp/blobs')
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loraroute.settings import Settings, get_settings

from ..errors import InvalidRequestError
from .base import CHUNK, BlobStore, BlobWriter, StoredBlob, check_digest, sha256_file
from .local import LocalBlobStore, LocalBlobWriter, fsync_dir

if TYPE_CHECKING:
    from .s3 import S3BlobStore


def open_blob_store(
    spec: str | Path | BlobStore | None,
    *,
    settings: Settings | None = None,
    default_dir: Path | None = None,
    work_dir: Path | None = None,
) -> BlobStore:
    """The store ``spec`` names: ``s3://bucket/prefix`` (endpoint, region, credentials and
    part size from ``settings``' ``s3_*`` fields), a folder (a path or ``file:///path``), or
    ``None``/``""``: ``default_dir`` (else ``settings.blob_dir``). ``work_dir`` holds an
    object store's temp files."""
    if isinstance(spec, BlobStore):
        return spec
    settings = settings or get_settings()
    text = str(spec) if spec is not None else ""
    if text.startswith("s3://"):
        from .s3 import S3BlobStore

        return S3BlobStore.from_url(text, settings, work_dir=work_dir)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise InvalidRequestError(
            f"blob store {text.split('://', 1)[0]!r}:// is not supported: use s3://bucket/prefix, "
            f"a folder, or leave LORAROUTE_BLOB_STORE empty for the folder beside the registry"
        )
    if not text:
        return LocalBlobStore(default_dir or settings.blob_dir)
    return LocalBlobStore(Path(text).expanduser().absolute())


def __getattr__(name: str):  # S3BlobStore imports boto3: load it on first use
    if name == "S3BlobStore":
        from .s3 import S3BlobStore

        return S3BlobStore
    raise AttributeError(name)


__all__ = [
    "CHUNK",
    "BlobStore",
    "BlobWriter",
    "LocalBlobStore",
    "LocalBlobWriter",
    "S3BlobStore",
    "StoredBlob",
    "check_digest",
    "fsync_dir",
    "open_blob_store",
    "sha256_file",
]
