"""The one place that talks to OpenSSF ``model-signing`` (PyPI ``model-signing``).

Signing uses its public API (``model_signing.signing.Config`` over a checkout folder, the
bundle written as ``model.sig``). Verifying uses the verifier classes behind
``model_signing.verifying.Config`` directly: the public ``verify(folder, sig)`` re-hashes a
folder, but the registry checks a bundle against the sha256 digests it already holds, and
must turn every failure into a message without filesystem paths. Only this module imports
``model_signing._signing``; a new model-signing release is checked here.

The bundles are model-signing's standard Sigstore bundles (v0.3, DSSE envelope, in-toto
statement with per-file sha256 digests), readable by ``model_signing verify``.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import io
import json
import pathlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .adapter_config import show
from .errors import SignatureError
from .validate import SIGNATURE_NAME, check_file_name

MAX_SIGNATURE_BYTES = 1 << 20
# what model-signing raises on a bundle that parsed but holds unexpected values
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, binascii.Error)
INSTALL_HINT = "signing needs model-signing: pip install 'loraroute[signing]'"


def _lib() -> Any:
    try:
        import model_signing.hashing
        import model_signing.signing
        from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb
        from model_signing._signing import signing as internals
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return (
        model_signing,
        sign_ec_key,
        sign_certificate,
        sign_sigstore_pb,
        internals,
    )


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle read (not yet trusted): who claims to have signed, and which files."""

    text: str
    digest: str  # sha256 of the bundle text: its identity in the registry
    kind: Literal["key", "certificate"]
    key_hint: str | None  # model-signing's hint: sha256 hex of the signer's public key PEM
    certificate_der: bytes | None
    files: dict[str, str]  # relative path -> "sha256:<hex>", as the statement lists them
    signature: Any  # model_signing's Signature object, for the verifiers

    @property
    def signer(self) -> str:
        if self.kind == "certificate":
            ids = certificate_identities(self.certificate_der or b"")
            return "cert:" + (ids[0] if ids else "unknown")
        return "key:" + (self.key_hint or "unknown")


def bundle_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _manifest_files(manifest: Any) -> dict[str, str]:
    ser = manifest.serialization_type
    if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
        raise SignatureError(
            f"the signature hashes the model by {show(ser.get('method'))} with "
            f"{show(ser.get('hash_type'))}; the registry accepts file-level sha256 signatures "
            f"(model-signing's default), re-sign without sharding or another hash"
        )
    files: dict[str, str] = {}
    for rd in manifest.resource_descriptors():
        name = str(rd.identifier)
        try:
            check_file_name(name)
        except ValueError as exc:
            raise SignatureError(f"the signature lists an unsafe file name: {exc}") from None
        if rd.digest.algorithm != "sha256":
            raise SignatureError(f"the signature hashes {name!r} with {rd.digest.algorithm}")
        files[name] = "sha256:" + rd.digest.digest_hex
    return files


def parse_bundle(text: str) -> ParsedBundle:
    """Read a model-signing bundle (JSON text); :class:`SignatureError` if it is not one."""
    _, _, _, sigstore_pb, internals = _lib()
    if not isinstance(text, str) or len(text.encode()) > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"a signature bundle must be JSON text of at most {MAX_SIGNATURE_BYTES} bytes"
        )
    not_bundle = "the signature is not a model-signing bundle"
    try:
        data = json.loads(text)
        material = data["verificationMaterial"]
        # the same adjustments as model_signing's Signature.read (older bundle layouts)
        material.setdefault("tlogEntries", [])
        if isinstance(material.get("publicKey"), dict):
            material["publicKey"].setdefault("hint", None)
            for k in ("rawBytes", "keyDetails"):
                material["publicKey"].pop(k, None)
        bundle = sigstore_pb.Signature(sigstore_pb.bundle_pb.Bundle.from_dict(data))
    except (*_MALFORMED, RecursionError) as exc:
        raise SignatureError(f"{not_bundle} ({type(exc).__name__})") from None
    b = bundle.bundle
    if b.media_type != sigstore_pb._BUNDLE_MEDIA_TYPE or b.dsse_envelope is None:
        raise SignatureError(f"{not_bundle}: media type {show(b.media_type)}, or no DSSE envelope")
    env = b.dsse_envelope
    if env.payload_type != internals._IN_TOTO_JSON_PAYLOAD_TYPE or len(env.signatures) != 1:
        raise SignatureError(f"{not_bundle}: it must sign one in-toto statement once")
    try:
        statement = json.loads(env.payload)
        manifest = internals.dsse_payload_to_manifest(statement)
    except (*_MALFORMED, RecursionError) as exc:
        raise SignatureError(
            f"{not_bundle}: its statement is malformed ({show(str(exc), 200)})"
        ) from None
    files = _manifest_files(manifest)
    material = b.verification_material
    chain = material.x509_certificate_chain
    cert = chain.certificates[0].raw_bytes if chain and chain.certificates else None
    if cert is None and material.public_key is None:
        raise SignatureError(f"{not_bundle}: it names neither a public key nor a certificate")
    hint = material.public_key.hint if material.public_key else None
    return ParsedBundle(
        text=text,
        digest=bundle_digest(text),
        kind="certificate" if cert else "key",
        key_hint=hint,
        certificate_der=cert,
        files=files,
        signature=bundle,
    )


def key_hint(public_key_pem: bytes) -> str:
    """model-signing's hint for a public key: sha256 hex of its SubjectPublicKeyInfo PEM."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def certificate_identities(der: bytes) -> list[str]:
    """The identities a signing certificate names: SAN emails, URIs, DNS names, then the CN."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return []
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            out += [str(v) for v in san.get_values_for_type(kind)]
    except x509.ExtensionNotFound:
        pass
    out += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return out


def _verified_files(verifier: Any, parsed: ParsedBundle) -> dict[str, str]:
    # ec_key.Verifier prints a warning for bundles without a key hint: keep stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = verifier.verify(parsed.signature)
    return _manifest_files(manifest)


def verify_with_key(parsed: ParsedBundle, public_key: Path) -> dict[str, str]:
    """The files a bundle signs, once its signature checks out against ``public_key``."""
    _, sign_ec_key, _, _, _ = _lib()
    from cryptography.exceptions import InvalidSignature

    try:
        return _verified_files(sign_ec_key.Verifier(pathlib.Path(public_key)), parsed)
    except SignatureError:
        raise
    except (InvalidSignature, *_MALFORMED) as exc:
        raise SignatureError(
            f"the signature does not verify with key {public_key.name!r} ({type(exc).__name__})"
        ) from None


def verify_with_certificates(parsed: ParsedBundle, chain: Sequence[Path]) -> dict[str, str]:
    """The files a certificate-signed bundle signs, once its certificate chains to ``chain``
    (local CA PEM files) and the signature checks out against the certificate's key."""
    _, _, sign_certificate, _, _ = _lib()
    from cryptography.exceptions import InvalidSignature
    from OpenSSL.crypto import X509StoreContextError

    if not chain:
        raise SignatureError("certificate signatures need the trusted CA certificates")
    try:
        verifier = sign_certificate.Verifier([pathlib.Path(p) for p in chain])
        return _verified_files(verifier, parsed)
    except SignatureError:
        raise
    except X509StoreContextError as exc:
        raise SignatureError(
            f"the signing certificate does not chain to the trusted CA ({exc})"
        ) from None
    except (InvalidSignature, *_MALFORMED) as exc:
        raise SignatureError(
            f"the certificate signature does not verify ({type(exc).__name__})"
        ) from None


def sign_folder(
    folder: Path,
    private_key: Path,
    *,
    password: str | None = None,
    certificate: Path | None = None,
    chain: Sequence[Path] = (),
) -> str:
    """Sign ``folder`` with model-signing (file-level sha256, ``model.sig`` ignored) and return
    the bundle text. ``certificate`` (with its ``chain``) selects certificate signing."""
    model_signing, _, _, _, _ = _lib()
    cfg = model_signing.signing.Config()
    try:
        if certificate is not None:
            cfg.use_certificate_signer(
                private_key=private_key, signing_certificate=certificate, certificate_chain=chain
            )
        else:
            # model-signing types the password as str but hands it to cryptography, which
            # wants bytes
            secret = password.encode() if password else None
            cfg.use_elliptic_key_signer(private_key=private_key, password=secret)  # type: ignore[arg-type]
    except AttributeError:  # model-signing reads .curve: an RSA or Ed25519 key
        raise SignatureError(
            f"cannot sign with key {Path(private_key).name!r}: it is not an elliptic-curve key; "
            f"model-signing signs with EC P-256/P-384/P-521 keys"
        ) from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"cannot sign with key {Path(private_key).name!r}: {exc}; use an EC P-256/P-384/"
            f"P-521 private key in PEM (and its password, if it is encrypted)"
        ) from None
    except OSError as exc:
        raise SignatureError(
            f"cannot read the signing key or certificate: {exc.strerror}"
        ) from None
    cfg.set_hashing_config(model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME]))
    with tempfile.TemporaryDirectory(prefix="lr-sign-") as tmp:
        out = Path(tmp) / SIGNATURE_NAME
        cfg.sign(folder, out)
        return out.read_text(encoding="utf-8")


__all__ = [
    "MAX_SIGNATURE_BYTES",
    "ParsedBundle",
    "bundle_digest",
    "certificate_identities",
    "key_hint",
    "parse_bundle",
    "sign_folder",
    "verify_with_certificates",
    "verify_with_key",
]
