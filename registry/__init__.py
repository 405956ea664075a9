"""loraroute.registry: versioned, verified, concurrent-safe adapter store.

Example::

    >>> from loraroute.registry import open_registry
    >>> reg = open_registry()  # doctest: +SKIP  (settings.registry_url: SQLite under home)
    >>> v = reg.push("out/legal", "legal", domain="law", routing_examples=["draft an NDA"])  # doctest: +SKIP
    >>> reg.resolve("legal@1").digest  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loraroute.settings import Settings, get_settings

from .blobs import BlobStore, open_blob_store
from .errors import (
    AdapterNotFoundError,
    AuthError,
    ForbiddenError,
    IntegrityError,
    InvalidAdapterError,
    InvalidReferenceError,
    InvalidRequestError,
    InvalidResponseError,
    LimitError,
    QualityGateError,
    RegistryError,
    RemoteError,
    SchemaError,
    SignatureError,
    StorageError,
    VersionConflictError,
)
from .evals import EvalResult, GateReport, dataset_digest
from .limits import Limits
from .local import Registry
from .refs import Ref, parse_ref
from .reports import GcReport, VerifyReport
from .signing import SignatureReport, TrustPolicy, load_trust_policy, verify_signatures
from .tables import AdapterVersion, FileInfo
from .validate import AdapterConfig, AdapterInfo, LoraModule, read_adapter_config, validate_folder

if TYPE_CHECKING:
    from .remote import RemoteRegistry


def open_registry(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    blob_dir: str | Path | None = None,
    blob_store: BlobStore | str | None = None,
    token: str | None = None,
    trust_policy: TrustPolicy | None = None,
    limits: Limits | None = None,
) -> Registry | RemoteRegistry:
    """Open the registry at ``url`` (``None`` -> ``settings.registry_url``).

    ``sqlite:///path`` or ``postgresql://...`` give a local :class:`Registry`;
    ``http(s)://...`` gives a :class:`RemoteRegistry` with the same methods.
    ``blob_store`` (default: ``blob_dir``, else ``settings.blob_store``) is where a local
    registry keeps its blobs: ``s3://bucket/prefix`` or a folder.
    ``trust_policy`` (default: ``settings.trust_policy``) makes pull and local_path refuse
    versions without a trusted signature.
    ``limits`` default to :class:`Limits` from the environment (``LORAROUTE_REGISTRY_MAX_*``).
    """
    settings = settings or get_settings()
    url = url or settings.registry_url
    if url.startswith(("http://", "https://")):
        from .remote import RemoteRegistry

        return RemoteRegistry(
            url, token=token, settings=settings, trust_policy=trust_policy, limits=limits
        )
    return Registry(
        url,
        settings=settings,
        blob_dir=Path(blob_dir) if blob_dir else None,
        blob_store=blob_store,
        trust_policy=trust_policy,
        limits=limits,
    )


def __getattr__(name: str):  # RemoteRegistry imports httpx; load it on first use
    if name == "RemoteRegistry":
        from .remote import RemoteRegistry

        return RemoteRegistry
    raise AttributeError(name)


__all__ = [
    "AdapterConfig",
    "AdapterInfo",
    "AdapterNotFoundError",
    "AdapterVersion",
    "AuthError",
    "BlobStore",
    "EvalResult",
    "FileInfo",
    "ForbiddenError",
    "GateReport",
    "GcReport",
    "IntegrityError",
    "InvalidAdapterError",
    "InvalidReferenceError",
    "InvalidRequestError",
    "InvalidResponseError",
    "LimitError",
    "Limits",
    "LoraModule",
    "QualityGateError",
    "Ref",
    "Registry",
    "RegistryError",
    "RemoteError",
    "RemoteRegistry",
    "SchemaError",
    "SignatureError",
    "SignatureReport",
    "StorageError",
    "TrustPolicy",
    "VerifyReport",
    "VersionConflictError",
    "dataset_digest",
    "load_trust_policy",
    "open_blob_store",
    "open_registry",
    "parse_ref",
    "read_adapter_config",
    "validate_folder",
    "verify_signatures",
]
