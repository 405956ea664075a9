"""Signed adapters: OpenSSF model-signing bundles, a trust policy, and their checks.

A signature is model-signing's standard bundle over the files of a version (file-level sha256,
``model.sig`` itself left out), so ``model_signing verify key --signature model.sig FOLDER``
accepts a pulled folder too. The registry stores bundles with the version; a pull writes one
beside the files as ``model.sig``; a push of a folder holding ``model.sig`` attaches it.

A :class:`TrustPolicy` lists trusted EC public keys and/or a local CA with the certificate
identities it may sign for. Under a policy, pull, checkout and the runtime refuse a version
unless one of its signatures is by a trusted signer and covers exactly its files; without a
policy signatures are only reported.

Example::

    >>> policy = TrustPolicy.from_file("trust.json")  # doctest: +SKIP
    >>> verify_signatures(Path("out/legal"), policy).ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ._model_signing import (
    MAX_SIGNATURE_BYTES,
    ParsedBundle,
    certificate_identities,
    key_hint,
    parse_bundle,
    sign_folder,
    verify_with_certificates,
    verify_with_key,
)
from .errors import SignatureError
from .validate import SIGNATURE_NAME, scan_folder

if TYPE_CHECKING:
    from loraroute.settings import Settings

logger = logging.getLogger(__name__)

MAX_SIGNATURES_PER_VERSION = 32


class TrustPolicy(BaseModel):
    """Who may sign adapters this process loads.

    ``public_keys``: PEM files of trusted EC public keys (model-signing key signing).
    ``certificate_chain``: PEM files of the local CA (and intermediates) for certificate
    signing; ``identities``: the certificate identities (SAN email, URI or DNS name, or the
    subject CN) trusted under that CA. A JSON file of the same keys is read by
    :meth:`from_file`; its relative paths are relative to the file.

    Example: ``TrustPolicy(public_keys=[Path("keys/release.pub.pem")])``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    public_keys: list[Path] = []
    certificate_chain: list[Path] = []
    identities: list[str] = []

    @field_validator("public_keys", "certificate_chain")
    @classmethod
    def _readable(cls, paths: list[Path], info: Any) -> list[Path]:
        for p in paths:
            if not p.is_file():
                raise ValueError(f"{info.field_name}: {p.name!r} is not a readable file")
        return paths

    @model_validator(mode="after")
    def _complete(self) -> TrustPolicy:
        if not self.public_keys and not self.certificate_chain:
            raise ValueError("a trust policy needs public_keys and/or certificate_chain")
        if bool(self.certificate_chain) != bool(self.identities):
            raise ValueError(
                "certificate_chain and identities go together: name the CA and the "
                "certificate identities it may sign for"
            )
        for p in self.public_keys:
            try:
                key_hint(p.read_bytes())
            except (ValueError, TypeError) as exc:
                raise ValueError(f"public_keys: {p.name!r} is not a PEM public key") from exc
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> TrustPolicy:
        """Read a JSON policy file, e.g. ``{"public_keys": ["release.pub.pem"]}``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SignatureError(
                f"trust policy {path.name!r} cannot be read as JSON ({exc})"
            ) from None
        if not isinstance(data, dict):
            raise SignatureError(f"trust policy {path.name!r} must hold a JSON object")
        for key in ("public_keys", "certificate_chain"):
            if isinstance(data.get(key), list):
                data[key] = [
                    p if not isinstance(p, str) else str(path.parent / p) for p in data[key]
                ]
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise SignatureError(f"trust policy {path.name!r} is invalid: {problems}") from None

    def hints(self) -> dict[str, Path]:
        """model-signing key hint -> trusted public key file."""
        return {key_hint(p.read_bytes()): p for p in self.public_keys}


def load_trust_policy(settings: Settings | None = None) -> TrustPolicy | None:
    """The policy named by ``settings.trust_policy`` (env ``LORAROUTE_TRUST_POLICY``), or None.

    Example: ``policy = load_trust_policy()`` (None: signatures are not required)
    """
    if settings is None:
        from loraroute.settings import get_settings

        settings = get_settings()
    return TrustPolicy.from_file(settings.trust_policy) if settings.trust_policy else None


@dataclass
class SignatureInfo:
    """A signature stored with a version: the bundle and who it says signed it."""

    digest: str  # sha256 of the bundle text
    kind: Literal["key", "certificate"]
    signer: str  # "key:<model-signing key hint>" or "cert:<identity>"
    bundle: str
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SignatureInfo:
        """From a registry's JSON answer: the bundle is parsed again, not trusted as told."""
        bundle = d.get("bundle")
        info = describe_bundle(bundle if isinstance(bundle, str) else "")
        created = d.get("created_at")
        if isinstance(created, str):
            try:
                info.created_at = datetime.fromisoformat(created.replace("Z", "+00:00"))
            except ValueError:
                info.created_at = None
        return info


def describe_bundle(text: str) -> SignatureInfo:
    """Parse a bundle (not yet trusted) into what the registry records about it.

    Example: ``describe_bundle(Path("out/legal/model.sig").read_text()).signer``
    """
    p = parse_bundle(text)
    return SignatureInfo(digest=p.digest, kind=p.kind, signer=p.signer, bundle=text)


@dataclass
class SignatureCheck:
    """One signature checked: does it cover exactly the files, and is its signer trusted?"""

    digest: str
    kind: str
    signer: str
    covers_files: bool
    trusted: bool | None = None  # None: no policy was given
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SignatureReport:
    """The signatures of one version or folder, checked; ``ok`` under a policy means at least
    one trusted signature covers the files, without a policy that none is broken."""

    subject: str
    policy: bool
    checks: list[SignatureCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.policy:
            return any(c.trusted and c.covers_files for c in self.checks)
        return all(c.covers_files for c in self.checks)

    @property
    def reason(self) -> str:
        """Why the report is not ok (empty when it is)."""
        if self.ok:
            return ""
        if not self.checks:
            return f"{self.subject} is unsigned"
        return f"{self.subject}: " + "; ".join(
            f"signature {c.digest[7:19]} ({c.signer[:40]}): {c.problem}" for c in self.checks
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "policy": self.policy,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


def _diff(signed: Mapping[str, str], files: Mapping[str, str]) -> str | None:
    if dict(signed) == dict(files):
        return None
    parts = []
    if missing := sorted(set(signed) - set(files)):
        parts.append(f"signed files absent: {', '.join(missing)[:200]}")
    if extra := sorted(set(files) - set(signed)):
        parts.append(f"files not signed: {', '.join(extra)[:200]}")
    if changed := sorted(k for k in set(signed) & set(files) if signed[k] != files[k]):
        parts.append(f"files changed since signing: {', '.join(changed)[:200]}")
    return "; ".join(parts)


def _trust(parsed: ParsedBundle, policy: TrustPolicy) -> tuple[dict[str, str] | None, str]:
    """(the verified signed files, "") or (None, why it is not trusted)."""
    if parsed.kind == "certificate":
        if not policy.certificate_chain:
            return None, "signed with a certificate, but the policy trusts no CA"
        ids = certificate_identities(parsed.certificate_der or b"")
        if not set(ids) & set(policy.identities):
            return None, f"certificate identity {ids[:3]} is not in the trust policy"
        try:
            return verify_with_certificates(parsed, policy.certificate_chain), ""
        except SignatureError as exc:
            return None, str(exc)
    hints = policy.hints()
    keys = [hints[parsed.key_hint]] if parsed.key_hint in hints else []
    if not keys and parsed.key_hint is None:
        keys = list(hints.values())  # an old bundle without a hint: try every trusted key
    if not keys:
        return None, "signed by a key the trust policy does not list"
    last = ""
    for key in keys:
        try:
            return verify_with_key(parsed, key), ""
        except SignatureError as exc:
            last = str(exc)
    return None, last


def check_signatures(
    subject: str,
    files: Mapping[str, str],
    bundles: Sequence[str],
    policy: TrustPolicy | None,
) -> SignatureReport:
    """Check ``bundles`` against ``files`` (relative path -> ``sha256:<hex>``) and ``policy``.

    Never raises for a bad signature: each one is reported. Example:
    ``check_signatures("legal@3", {f.path: f.digest for f in v.files}, bundles, policy)``
    """
    report = SignatureReport(subject=subject, policy=policy is not None)
    for text in bundles:
        try:
            parsed = parse_bundle(text)
        except SignatureError as exc:
            digest = "sha256:" + hashlib.sha256(text.encode(errors="replace")).hexdigest()
            report.checks.append(
                SignatureCheck(digest, "unknown", "unknown", False, False, str(exc))
            )
            continue
        check = SignatureCheck(parsed.digest, parsed.kind, parsed.signer, True)
        signed = parsed.files
        if policy is not None:
            verified, why = _trust(parsed, policy)
            check.trusted = verified is not None
            check.problem = why or None
            signed = verified if verified is not None else signed
        diff = _diff(signed, files)
        if diff:
            check.covers_files = False
            check.problem = "; ".join(x for x in (check.problem, diff) if x)
        report.checks.append(check)
    return report


def require(report: SignatureReport) -> SignatureReport:
    """Raise :class:`SignatureError` when a policy was applied and ``report`` is not ok.

    Example: ``require(check_signatures("legal@3", files, bundles, policy))``
    """
    if report.policy and not report.ok:
        hint = (
            "sign it with `adapters sign REF --key KEY.pem` by a trusted key"
            if not report.checks
            else "re-sign it with a trusted key, or fetch it again if it was modified"
        )
        raise SignatureError(f"refused under the trust policy: {report.reason}; {hint}")
    return report


def folder_digests(folder: Path) -> dict[str, str]:
    """Relative path -> ``sha256:<hex>`` of an adapter folder's files (``model.sig`` left out).

    Example: ``folder_digests(Path("out/legal"))["adapter_config.json"]``
    """
    from .blobs import sha256_file

    files = scan_folder(folder)
    files.pop(SIGNATURE_NAME, None)
    return {rel: sha256_file(path)[0] for rel, path in files.items()}


def verify_signatures(
    folder: str | Path,
    policy: TrustPolicy | None = None,
    *,
    bundles: Sequence[str] | None = None,
    label: str | None = None,
) -> SignatureReport:
    """Check the signatures of an adapter folder (its ``model.sig`` unless ``bundles`` are
    given) against the folder's files; under ``policy``, raise :class:`SignatureError` unless
    a trusted signature covers them exactly.

    This is what the runtime calls before it loads a folder. Example:
    ``verify_signatures(folder, load_trust_policy())`` (no policy: a report, never raises)
    """
    folder = Path(folder)
    subject = label or f"adapter folder {folder.name!r}"
    if bundles is None:
        sig = folder / SIGNATURE_NAME
        if sig.is_symlink():
            raise SignatureError(f"{subject}: {SIGNATURE_NAME} is a symlink")
        try:
            bundles = [sig.read_text(encoding="utf-8")] if sig.is_file() else []
        except (OSError, UnicodeDecodeError) as exc:
            raise SignatureError(f"{subject}: {SIGNATURE_NAME} cannot be read ({exc})") from None
    return require(check_signatures(subject, folder_digests(folder), bundles, policy))


def preferred_bundle(infos: Sequence[SignatureInfo], report: SignatureReport | None) -> str | None:
    """The bundle to write as ``model.sig``: the first one trusted under the policy, else the
    first stored."""
    if not infos:
        return None
    if report is not None:
        good = {c.digest for c in report.checks if c.trusted and c.covers_files}
        for info in infos:
            if info.digest in good:
                return info.bundle
    return infos[0].bundle


__all__ = [
    "MAX_SIGNATURES_PER_VERSION",
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_NAME",
    "SignatureCheck",
    "SignatureInfo",
    "SignatureReport",
    "TrustPolicy",
    "check_signatures",
    "describe_bundle",
    "folder_digests",
    "load_trust_policy",
    "preferred_bundle",
    "require",
    "sign_folder",
    "verify_signatures",
]
