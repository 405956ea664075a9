"""Which object store a registry's blobs are in, recorded in its database.

The first open with an object store (``s3://bucket/prefix``) records it; later, a client
that configures no store uses the recorded one (with its own ``LORAROUTE_S3_*`` endpoint and
credentials), and one configured with another store, or a folder, is refused: its pushes
would land where nobody else looks, and its pulls would find nothing. Folders are not
recorded (a path means something else on every machine).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, exc
from sqlmodel import Session

from .blobs import BlobStore
from .blobs.s3 import parse_s3_url
from .errors import RegistryError
from .tables import RegistryConfig

KEY = "blob_store"


def _object_store(spec: BlobStore | str | Path | None) -> str | None:
    if isinstance(spec, BlobStore):
        return spec.location if spec.kind == "s3" else None
    text = str(spec) if spec is not None else ""
    if not text.startswith("s3://"):
        return None
    bucket, prefix = parse_s3_url(text)
    return f"s3://{bucket}/{prefix}"


def pin_blob_store(
    read: Engine, write: Engine, spec: BlobStore | str | Path | None, where: str
) -> BlobStore | str | Path | None:
    """``spec`` (what the caller or the settings configure; None or "" for nothing) checked
    against the registry's record: the store to open."""
    given = _object_store(spec)
    with Session(read) as s:
        row = s.get(RegistryConfig, KEY)
    recorded = row.value if row is not None else None
    if recorded is None:
        if given is not None:
            try:
                with Session(write) as s:
                    s.add(RegistryConfig(key=KEY, value=given))
                    s.commit()
            except exc.IntegrityError:  # another client recorded one first: compare with it
                return pin_blob_store(read, write, spec, where)
        return spec
    if given is None and not str(spec or ""):
        return recorded
    if given != recorded:
        raise RegistryError(
            f"the blobs of the registry {where} are in {recorded} (recorded when it was first "
            f"used), but {given or 'a folder'} is configured; unset LORAROUTE_BLOB_STORE (or "
            f"set it to {recorded}) and give that store's LORAROUTE_S3_* endpoint and "
            f"credentials"
        )
    return spec


__all__ = ["pin_blob_store"]
