"""The local registry's model-signing bundles: the methods
:class:`~loraroute.registry.local.Registry` gets from :class:`SignatureMethods`."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from ._checkout import sign_version, signature_report
from ._db import bump_revision
from ._meta import bind_signatures
from .blobs import BlobStore
from .errors import SignatureError
from .refs import Ref
from .signing import (
    MAX_SIGNATURES_PER_VERSION,
    SignatureInfo,
    SignatureReport,
    TrustPolicy,
)
from .tables import Adapter, AdapterVersion, Version, VersionSignature

logger = logging.getLogger(__name__)


class SignatureMethods:
    """Signatures stored with versions (a mixin of Registry)."""

    _read: Engine
    _write: Engine
    blobs: BlobStore
    trust_policy: TrustPolicy | None

    if TYPE_CHECKING:

        def _find(self, s: Session, ref: str | Ref) -> tuple[Adapter, Version]: ...

        def resolve(self, ref: str) -> AdapterVersion: ...

    def _version_id(self, s: Session, v: AdapterVersion) -> int:
        _, row = self._find(s, Ref(v.name, digest=v.digest))
        return row.id  # type: ignore[return-value]

    def _store_signature(self, v: AdapterVersion, sig: SignatureInfo) -> SignatureInfo:
        with Session(self._write) as s:
            bump_revision(s)
            if not self._add_signatures(s, self._version_id(s, v), v.ref, [sig]):
                s.rollback()
                return sig
            s.commit()
        logger.info("%s: stored signature %s (%s)", v.ref, sig.digest, sig.signer)
        return sig

    @staticmethod
    def _add_signatures(
        s: Session, vid: int, label: str, sigs: Sequence[SignatureInfo]
    ) -> builtins.list[SignatureInfo]:
        """Add ``sigs`` to version ``vid`` in session ``s`` (not committed), skipping bundles it
        already carries (whose ``created_at`` they take); returns those added."""
        rows = s.exec(select(VersionSignature).where(VersionSignature.version_id == vid)).all()
        have = {r.digest: r for r in rows}
        added = []
        for sig in sigs:
            if sig.digest in have:
                sig.created_at = have[sig.digest].created_at
                continue
            if len(have) >= MAX_SIGNATURES_PER_VERSION:
                raise SignatureError(
                    f"{label} already carries {len(have)} signatures; the limit is "
                    f"{MAX_SIGNATURES_PER_VERSION}"
                )
            row = VersionSignature(
                version_id=vid,
                digest=sig.digest,
                kind=sig.kind,
                signer=sig.signer,
                bundle=sig.bundle,
            )
            s.add(row)
            have[sig.digest] = row
            sig.created_at = row.created_at
            added.append(sig)
        return added

    def attach_signature(self, ref: str | AdapterVersion, bundle: str) -> SignatureInfo:
        """Store a model-signing bundle with a version, after checking it signs exactly the
        version's files (its signer is judged later, by each reader's trust policy).

        Example: ``reg.attach_signature("legal@3", Path("model.sig").read_text())``
        """
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        (sig,) = bind_signatures(v.ref, [bundle], v.files)
        return self._store_signature(v, sig)

    def signatures(self, ref: str | AdapterVersion) -> builtins.list[SignatureInfo]:
        """The signatures stored with a version, oldest first.

        Example: ``[s.signer for s in reg.signatures("legal@3")]``
        """
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        with Session(self._read) as s:
            vid = self._version_id(s, v)
            rows = s.exec(
                select(VersionSignature)
                .where(VersionSignature.version_id == vid)
                .order_by(col(VersionSignature.id))
            ).all()
        return [
            SignatureInfo(
                r.digest,
                r.kind,  # type: ignore[arg-type]
                r.signer,
                r.bundle,
                r.created_at,
            )
            for r in rows
        ]

    def signature_report(
        self, ref: str | AdapterVersion, policy: TrustPolicy | None = None
    ) -> SignatureReport:
        """Check a version's signatures against its recorded digests and ``policy`` (default:
        this registry's ``trust_policy``); a report, never raises for a bad signature.

        Example: ``reg.signature_report("legal@3", TrustPolicy.from_file("trust.json")).ok``
        """
        v = ref if isinstance(ref, AdapterVersion) else self.resolve(ref)
        return signature_report(v, self.signatures(v), policy or self.trust_policy)

    def sign(
        self,
        ref: str,
        *,
        key: str | Path,
        password: str | None = None,
        certificate: str | Path | None = None,
        chain: Sequence[str | Path] = (),
    ) -> SignatureInfo:
        """Sign a version's files with model-signing (an EC private key PEM, or a certificate
        and its chain) and store the bundle with the version.

        Example: ``reg.sign("legal@3", key="release.key.pem")``
        """
        v = self.resolve(ref)
        bundle = sign_version(
            v, self.blobs.iter_chunks, key, password=password, certificate=certificate, chain=chain
        )
        return self.attach_signature(v, bundle)


__all__ = ["SignatureMethods"]
