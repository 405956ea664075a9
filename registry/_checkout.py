"""What every pull and checkout (local or remote registry) checks before it hands a folder out.

A new folder is validated by the strict validator and, under a trust policy, its version's
signatures are verified, all in the temp folder before the rename; the preferred signature is
written beside the files as ``model.sig``. A cached checkout is re-hashed under a policy (a
modified one is fetched again) and its signatures verified.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ._perms import new_file
from ._transfer import ChunkSource, checkout_ok, materialize
from .blobs import check_digest
from .errors import InvalidAdapterError
from .signing import (
    SignatureInfo,
    SignatureReport,
    TrustPolicy,
    check_signatures,
    folder_digests,
    preferred_bundle,
    require,
    sign_folder,
)
from .tables import AdapterVersion
from .validate import SIGNATURE_NAME, validate_folder

logger = logging.getLogger(__name__)


def write_signature(folder: Path, bundle: str) -> None:
    """Write ``model.sig`` into ``folder`` atomically (readers never see half a bundle)."""
    target = folder / SIGNATURE_NAME
    try:
        if target.read_text(encoding="utf-8") == bundle:
            return
    except (OSError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(prefix=".model.sig.", dir=folder)
    new_file(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(bundle)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def recorded(v: AdapterVersion) -> dict[str, str]:
    return {f.path: f.digest for f in v.files}


def new_checkout_check(
    v: AdapterVersion, signatures: Sequence[SignatureInfo], policy: TrustPolicy | None
) -> Callable[[Path], None]:
    """The check ``materialize`` runs on a complete temp folder before renaming it into place
    (its files were hashed against ``v``'s digests while written)."""

    def check(folder: Path) -> None:
        try:
            validate_folder(folder)
        except InvalidAdapterError as exc:
            raise InvalidAdapterError(f"{v.ref} is refused by the validator: {exc}") from None
        report = None
        if policy is not None:
            bundles = [s.bundle for s in signatures]
            report = require(check_signatures(v.ref, recorded(v), bundles, policy))
        bundle = preferred_bundle(signatures, report)
        if bundle is not None:
            write_signature(folder, bundle)

    return check


def cached_checkout_ok(
    v: AdapterVersion,
    folder: Path,
    signatures: Sequence[SignatureInfo],
    policy: TrustPolicy | None,
) -> bool:
    """Under a policy, re-hash a cached checkout: False if it was modified (fetch it again);
    raise :class:`SignatureError` if the version is not trusted. Without one: True."""
    if policy is None:
        return True
    try:
        actual = folder_digests(folder)
    except InvalidAdapterError as exc:
        logger.warning("cached checkout of %s is unusable (%s); fetching it again", v.ref, exc)
        return False
    if actual != recorded(v):
        logger.warning("cached checkout of %s was modified; fetching it again", v.ref)
        return False
    report = require(check_signatures(v.ref, actual, [s.bundle for s in signatures], policy))
    bundle = preferred_bundle(signatures, report)
    if bundle is not None:
        write_signature(folder, bundle)
    return True


def cached_checkout(
    v: AdapterVersion,
    root: Path,
    chunks: ChunkSource,
    signatures: Callable[[], Sequence[SignatureInfo]],
    policy: TrustPolicy | None,
) -> Path:
    """``v``'s verified checkout under ``root``, one folder per manifest digest: a cached one
    whose files are whole (and, under a policy, re-hash and verify) is handed out as it is;
    anything else is fetched again through ``chunks`` and checked before it appears.
    ``signatures`` is asked only when a check needs them."""
    dest = root / check_digest(v.digest).split(":", 1)[1]
    if dest.is_dir():
        if checkout_ok(v, dest) and (
            policy is None or cached_checkout_ok(v, dest, signatures(), policy)
        ):
            return dest
        logger.warning("cached checkout %s is incomplete; fetching it again", dest)
        shutil.rmtree(dest, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    check = new_checkout_check(v, signatures(), policy)
    try:
        return materialize(v, dest, chunks, check=check)
    except FileExistsError:  # another process materialized (and checked) it first
        return dest


def signature_report(
    v: AdapterVersion, signatures: Sequence[SignatureInfo], policy: TrustPolicy | None
) -> SignatureReport:
    """``v``'s signatures checked against its recorded digests and ``policy``."""
    return check_signatures(v.ref, recorded(v), [s.bundle for s in signatures], policy)


def sign_version(
    v: AdapterVersion,
    chunks: ChunkSource,
    key: str | Path,
    *,
    password: str | None = None,
    certificate: str | Path | None = None,
    chain: Sequence[str | Path] = (),
) -> str:
    """Sign ``v``'s files, as checked out (hash-verified) into a temp folder named after the
    adapter; returns the model-signing bundle text."""
    with tempfile.TemporaryDirectory(prefix="lr-sign-") as tmp:
        folder = materialize(v, Path(tmp) / v.name, chunks)
        return sign_folder(
            folder,
            Path(key),
            password=password,
            certificate=Path(certificate) if certificate else None,
            chain=[Path(c) for c in chain],
        )


__all__ = [
    "cached_checkout",
    "cached_checkout_ok",
    "new_checkout_check",
    "recorded",
    "sign_version",
    "signature_report",
    "write_signature",
]
