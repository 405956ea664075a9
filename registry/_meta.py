"""What a push records besides files: its metadata (checked and completed) and the
signatures (``model.sig``) a pushed folder carries."""

from __future__ import annotations

import builtins
import logging
from typing import Any

from pydantic import ValidationError

from loraroute.settings import Settings

from .errors import InvalidAdapterError, SignatureError
from .protocol import PushMeta
from .signing import MAX_SIGNATURES_PER_VERSION, SignatureInfo, check_signatures, describe_bundle
from .tables import FileInfo
from .validate import AdapterInfo

logger = logging.getLogger(__name__)

META_KEYS = (
    "domain",
    "description",
    "routing_examples",
    "tags",
    "metrics",
    "parent",
    "data_digest",
    "training_config",
    "author",
    "license",
    "base_model_id",
    "base_fingerprint",
)


def _base_fingerprint(info: AdapterInfo, settings: Settings) -> str | None:
    """The base model's fingerprint when its folder is available here, else None (logged)."""
    from loraroute import models
    from loraroute.errors import ModelResolutionError

    base = info.base_model_id
    if not base:
        logger.warning("adapter_config.json names no base model; base_fingerprint left empty")
        return None
    try:
        resolved = models.resolve_base_model(base, settings=settings, convert=False)
    except ModelResolutionError as e:
        logger.warning(
            "base model %r not resolvable here (%s); base_fingerprint left empty", base, e
        )
        return None
    if not resolved.path.is_dir():
        logger.warning("base model %r is not on this machine; base_fingerprint left empty", base)
        return None
    return models.fingerprint(resolved.path, settings=settings)


def complete_meta(
    info: AdapterInfo, meta: dict[str, Any], require_base: str | None, settings: Settings
) -> dict[str, Any]:
    """Push metadata with None dropped, base id/fingerprint filled in, ``require_base`` checked."""
    unknown = set(meta) - set(META_KEYS)
    if unknown:
        raise TypeError(f"push() got unknown metadata {sorted(unknown)}; allowed: {META_KEYS}")
    meta = {k: v for k, v in meta.items() if v is not None}
    meta.setdefault("base_model_id", info.base_model_id)
    if "base_fingerprint" not in meta:
        meta["base_fingerprint"] = _base_fingerprint(info, settings)
    if require_base is not None and meta["base_fingerprint"] != require_base:
        raise InvalidAdapterError(
            f"adapter base fingerprint is {meta['base_fingerprint']}, but "
            f"{require_base} is required; push an adapter trained on that base"
        )
    return meta


def read_signature_file(info: AdapterInfo) -> builtins.list[str]:
    """The ``model.sig`` bundle found in a pushed folder, as a one-item list (or none)."""
    from ._model_signing import MAX_SIGNATURE_BYTES

    if info.signature is None:
        return []
    with open(info.signature, "rb") as f:
        data = f.read(MAX_SIGNATURE_BYTES + 1)
    try:
        return [data.decode("utf-8")]
    except UnicodeDecodeError:
        raise SignatureError("model.sig is not a model-signing bundle (not UTF-8)") from None


def folder_files(info: AdapterInfo) -> builtins.list[FileInfo]:
    """The files of a validated folder with their digests (hashed here)."""
    from .blobs import sha256_file

    return [FileInfo(rel, *sha256_file(p)) for rel, p in sorted(info.files.items())]


def bind_signatures(
    label: str, bundles: builtins.list[str], files: builtins.list[FileInfo]
) -> builtins.list[SignatureInfo]:
    """Parse each bundle and refuse one that does not sign exactly ``files``."""
    if len(bundles) > MAX_SIGNATURES_PER_VERSION:
        raise SignatureError(
            f"{label} would carry {len(bundles)} signatures; the limit is "
            f"{MAX_SIGNATURES_PER_VERSION}"
        )
    digests = {f.path: f.digest for f in files}
    report = check_signatures(label, digests, bundles, None)
    for check in report.checks:
        if not check.covers_files:
            raise SignatureError(
                f"the signature ({check.signer[:40]}) does not cover {label}'s files: "
                f"{check.problem}; sign the folder as it is pushed (model.sig itself excluded)"
            )
    return [describe_bundle(b) for b in bundles]


def metrics_of(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidAdapterError(f"metric {k!r} is {v!r}; metrics must be numbers")
        out[str(k)] = float(v)
    return out


def check_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """``meta`` checked by the wire model (types, NUL, surrogates, finite metrics), with
    None values dropped; raises InvalidAdapterError naming the field.

    As before the wire model existed, tag keys and values may be any scalars (stored as
    text) and a metric of None is left out.
    """
    meta = dict(meta)
    if isinstance(meta.get("tags"), dict):
        meta["tags"] = {str(k): str(v) for k, v in meta["tags"].items()}
    if isinstance(meta.get("metrics"), dict):
        meta["metrics"] = {k: v for k, v in meta["metrics"].items() if v is not None}
    try:
        return PushMeta.model_validate(meta).model_dump(exclude_none=True)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'metadata'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise InvalidAdapterError(f"the metadata of {name!r} was refused: {problems}") from None
