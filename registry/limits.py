"""Size and count limits of a registry: blobs, manifests, routing examples, model cards,
request and response bodies.

The HTTP server answers 413 when a limit is passed; the local API and the CLI raise
:class:`LimitError` with the same message; a :class:`RemoteRegistry` refuses answers beyond
them. Each limit is also a setting (``Settings.registry_<field>``, environment variable
``LORAROUTE_REGISTRY_<FIELD>``; sizes accept ``4GiB``, ``512MiB``, or a number of bytes), which
:meth:`Limits.from_settings` reads.

Example::

    >>> Limits().max_blob_bytes.human_readable()
    '4.0GiB'
    >>> Limits(max_routing_examples=100).max_routing_examples
    100
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ByteSize, ConfigDict, Field

from loraroute.settings import Settings

from .errors import LimitError
from .tables import FileInfo

ENV_PREFIX = "LORAROUTE_REGISTRY_"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CARD_NAMES = ("readme.md",)
_UNHASHED = "sha256:" + "0" * 64  # stands in for a digest not computed yet (same length)

Bytes = Annotated[ByteSize, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


def size_text(n: int) -> str:
    """``70000`` -> ``'70000 bytes (68.4KiB)'``."""
    return f"{n} bytes ({ByteSize(n).human_readable()})" if n >= KiB else f"{n} bytes"


class Limits(BaseModel):
    """Limits of one registry (server side) or of what one client accepts (client side)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_blob_bytes: Bytes = ByteSize(4 * GiB)
    """Largest single file of an adapter."""
    max_request_bytes: Bytes = ByteSize(32 * MiB)
    """Largest HTTP request body other than a blob upload (a manifest with its metadata)."""
    max_manifest_files: Count = 1000
    """Most files in one version."""
    max_manifest_bytes: Bytes = ByteSize(1 * MiB)
    """Largest file list of one version, as JSON."""
    max_routing_examples: Count = 10_000
    """Most routing examples of one version."""
    max_routing_example_chars: Count = 4096
    """Longest routing example, in characters."""
    max_model_card_bytes: Bytes = ByteSize(1 * MiB)
    """Largest model card (README.md)."""
    max_metadata_bytes: Bytes = ByteSize(1 * MiB)
    """Largest metadata of one version as JSON (description, tags, metrics, training config,
    ...), routing examples not counted."""
    max_response_bytes: Bytes = ByteSize(256 * MiB)
    """Largest JSON answer a client reads from a remote registry."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits the settings (the environment) give, defaults where they give none."""
        return cls(**{f: getattr(settings, "registry_" + f) for f in cls.model_fields})

    def refuse(self, field: str, what: str) -> LimitError:
        """The error for ``what`` (e.g. "legal has 4 routing examples") passing ``field``."""
        limit = getattr(self, field)
        shown = size_text(limit) if field.endswith("_bytes") else f"{limit}"
        return LimitError(
            f"{what}; this registry accepts at most {shown} "
            f"(setting {ENV_PREFIX}{field.upper()}); make it smaller or ask the registry's "
            f"operator to raise the limit"
        )

    def check_blob(self, size: int, what: str = "a blob") -> None:
        if size > self.max_blob_bytes:
            raise self.refuse("max_blob_bytes", f"{what} has {size_text(size)}")

    def check_files(self, files: Iterable[FileInfo], name: str = "the adapter") -> None:
        """Refuse a file list beyond the manifest, blob or model-card limits."""
        files = list(files)
        if len(files) > self.max_manifest_files:
            raise self.refuse(
                "max_manifest_files", f"the manifest of {name} lists {len(files)} files"
            )
        for f in files:
            self.check_blob(f.size, f"file {f.path!r} of {name}")
            if f.path.lower() in CARD_NAMES:
                self.check_card(f.size, f"the model card {f.path} of {name}")
        raw = len(json.dumps([f.to_dict() for f in files], separators=(",", ":")).encode())
        if raw > self.max_manifest_bytes:
            raise self.refuse(
                "max_manifest_bytes", f"the manifest of {name} takes {size_text(raw)} as JSON"
            )

    def check_sizes(self, sizes: Mapping[str, int], name: str = "the adapter") -> None:
        """:meth:`check_files` for a folder not hashed yet (relative path -> size)."""
        self.check_files([FileInfo(p, _UNHASHED, n) for p, n in sorted(sizes.items())], name)

    def check_card(self, size: int, what: str = "the model card") -> None:
        if size > self.max_model_card_bytes:
            raise self.refuse("max_model_card_bytes", f"{what} has {size_text(size)}")

    def check_meta(self, meta: Mapping[str, Any], name: str = "the adapter") -> None:
        """Refuse routing examples or other metadata beyond the limits."""
        examples = meta.get("routing_examples") or []
        if len(examples) > self.max_routing_examples:
            raise self.refuse(
                "max_routing_examples", f"{name} has {len(examples)} routing examples"
            )
        for i, text in enumerate(examples):
            if isinstance(text, str) and len(text) > self.max_routing_example_chars:
                raise self.refuse(
                    "max_routing_example_chars",
                    f"routing example {i + 1} of {name} has {len(text)} characters",
                )
        rest = {k: v for k, v in meta.items() if k != "routing_examples"}
        raw = len(json.dumps(rest, separators=(",", ":"), default=str).encode())
        if raw > self.max_metadata_bytes:
            raise self.refuse(
                "max_metadata_bytes", f"the metadata of {name} takes {size_text(raw)} as JSON"
            )


__all__ = ["CARD_NAMES", "ENV_PREFIX", "Limits", "size_text"]
