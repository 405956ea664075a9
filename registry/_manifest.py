"""The manifest digest: sha256 over the canonical JSON list of (path, digest, size)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from .tables import FileInfo

SCHEMA = "loraroute.manifest.v1"


def manifest_bytes(files: Iterable[FileInfo]) -> bytes:
    entries = [
        {"path": f.path, "digest": f.digest, "size": f.size}
        for f in sorted(files, key=lambda f: f.path)
    ]
    doc = {"schema": SCHEMA, "files": entries}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(files: Iterable[FileInfo]) -> str:
    """``sha256:<hex>`` naming a version's content, independent of its metadata."""
    return "sha256:" + hashlib.sha256(manifest_bytes(files)).hexdigest()
