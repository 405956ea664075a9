"""Signed adapters with OpenSSF model-signing: real EC keys and a local CA made here, a real
SQLite file, PostgreSQL, and the HTTP registry on loopback.

Under a trust policy a signed version passes; a tampered, unsigned, or untrusted one is
refused; without a policy nothing changes. Signatures travel push -> pull -> push."""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from loraroute.cli import main
from loraroute.registry import (
    AuthError,
    IntegrityError,
    Registry,
    RemoteRegistry,
    SignatureError,
    TrustPolicy,
    open_registry,
    verify_signatures,
)
from loraroute.registry.auth import create_token
from loraroute.registry.testing import (
    PostgresUnavailable,
    temporary_postgres,
    write_lora_folder,
)


# -- key material ----------------------------------------------------------------------------
def _write_key(folder: Path, name: str):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (folder / f"{name}.key.pem").write_bytes(
        key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    )
    (folder / f"{name}.pub.pem").write_bytes(
        key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    )
    return key


def _cert(subject_key, issuer_key, issuer_name, subject: str, *, ca: bool, email=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage),
            critical=True,
        )
    )
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256()), name


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """release/other EC key pairs, and a local CA with leaf certificates, as PEM files."""
    from cryptography.hazmat.primitives import serialization as s

    d = tmp_path_factory.mktemp("keys")
    _write_key(d, "release")
    _write_key(d, "other")
    for ca_name in ("ca", "rogue-ca"):
        ca_key = _write_key(d, ca_name)
        ca_cert, issuer = _cert(ca_key, ca_key, None, ca_name, ca=True)
        (d / f"{ca_name}.pem").write_bytes(ca_cert.public_bytes(s.Encoding.PEM))
        leaf_key = _write_key(d, f"{ca_name}-leaf")
        leaf, _ = _cert(leaf_key, ca_key, issuer, "release", ca=False, email="release@example.com")
        (d / f"{ca_name}-leaf.pem").write_bytes(leaf.public_bytes(s.Encoding.PEM))
    return d


def key_policy(keys: Path, name: str = "release") -> TrustPolicy:
    return TrustPolicy(public_keys=[keys / f"{name}.pub.pem"])


def cert_policy(keys: Path, identity: str = "release@example.com") -> TrustPolicy:
    return TrustPolicy(certificate_chain=[keys / "ca.pem"], identities=[identity])


# -- registries ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """The HTTP registry (uvicorn) in a thread of this process, on loopback."""

    def __init__(self, store: Registry) -> None:
        import uvicorn

        from loraroute.registry.server import create_app

        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.tokens = {scope: create_token(store, scope) for scope in ("read", "write", "admin")}

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("registry server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Env:
    kind: str
    reg: Registry | RemoteRegistry  # what the test drives
    store: Registry  # where the bytes live (the server's store for HTTP)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "http"])
def env(request, tmp_path, lr_home, service_missing):
    kind = request.param
    if kind == "postgres":
        try:
            with temporary_postgres() as url:
                store = open_registry(url, blob_dir=tmp_path / "pg-blobs")
                yield Env(kind, store, store)
                store.close()
        except PostgresUnavailable as exc:
            service_missing(str(exc))
        return
    store = open_registry(f"sqlite:///{tmp_path / 'store' / 'registry.db'}")
    if kind == "sqlite":
        yield Env(kind, store, store)
    else:
        with ThreadServer(store) as srv:
            client = RemoteRegistry(srv.url, token=srv.tokens["admin"])
            yield Env(kind, client, store)
            client.close()
    store.close()


@pytest.fixture
def adapter(tmp_path) -> Path:
    return write_lora_folder(tmp_path / "legal")


def flip_byte(path: Path, offset: int = -5) -> None:
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


# -- the contract, on every registry ---------------------------------------------------------
def test_signed_version_passes_under_policy(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    sig = env.reg.sign(v.ref, key=keys / "release.key.pem")
    assert sig.kind == "key" and sig.signer.startswith("key:")
    env.reg.trust_policy = key_policy(keys)
    out = env.reg.pull(v.ref, tmp_path / "pulled")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "model.sig",
    ]
    assert verify_signatures(out, key_policy(keys)).ok
    checkout = env.reg.local_path(v.ref)
    assert (checkout / "model.sig").read_text() == sig.bundle
    assert env.reg.local_path(v.ref) == checkout  # the cached checkout, re-verified
    report = env.reg.verify(v.ref)
    assert report.ok and report.signatures[0]["checks"][0]["trusted"] is True


def test_unsigned_version_refused_under_policy(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    env.reg.trust_policy = key_policy(keys)
    with pytest.raises(SignatureError, match="legal@1 is unsigned.*adapters sign"):
        env.reg.pull(v.ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(SignatureError, match="legal@1 is unsigned"):
        env.reg.local_path(v.ref)
    report = env.reg.verify(v.ref)
    assert not report.ok and "legal@1 is unsigned" in report.problems[0]


def test_untrusted_key_refused(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    env.reg.sign(v.ref, key=keys / "other.key.pem")
    env.reg.trust_policy = key_policy(keys)
    with pytest.raises(SignatureError, match="legal@1.*key the trust policy does not list"):
        env.reg.pull(v.ref, tmp_path / "pulled")
    env.reg.sign(v.ref, key=keys / "release.key.pem")  # a second signature, trusted
    assert len(env.reg.signatures(v.ref)) == 2
    out = env.reg.pull(v.ref, tmp_path / "pulled")
    assert verify_signatures(out, key_policy(keys)).ok  # model.sig is the trusted one


def test_tampered_blob_refused(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    env.reg.sign(v.ref, key=keys / "release.key.pem")
    env.reg.trust_policy = key_policy(keys)
    weights = next(f for f in v.files if f.path == "adapter_model.safetensors")
    flip_byte(env.store.blobs.path(weights.digest))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        env.reg.pull(v.ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    assert not env.reg.verify(v.ref).ok


def test_tampered_checkout_refused(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    env.reg.sign(v.ref, key=keys / "release.key.pem")
    env.reg.trust_policy = policy = key_policy(keys)
    out = env.reg.pull(v.ref, tmp_path / "pulled")
    flip_byte(out / "adapter_model.safetensors")
    with pytest.raises(SignatureError, match="files changed since signing: adapter_model"):
        verify_signatures(out, policy)
    (out / "notes.txt").write_text("added after signing")
    with pytest.raises(SignatureError, match="files not signed: notes.txt"):
        verify_signatures(out, policy)
    # a modified cached checkout is fetched again from the (intact) registry, then verified
    checkout = env.reg.local_path(v.ref)
    flip_byte(checkout / "adapter_model.safetensors")
    assert env.reg.local_path(v.ref) == checkout
    assert verify_signatures(checkout, policy).ok


def test_without_a_policy_nothing_changes(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    assert env.reg.trust_policy is None
    out = env.reg.pull(v.ref, tmp_path / "pulled")
    assert not (out / "model.sig").exists()
    report = verify_signatures(out)  # a report, never an error, without a policy
    assert report.ok and report.checks == [] and not report.policy
    assert env.reg.verify(v.ref).ok


def test_signature_must_cover_the_files(env, adapter, keys, tmp_path):
    v1 = env.reg.push(adapter, "legal")
    env.reg.sign(v1.ref, key=keys / "release.key.pem")
    bundle = env.reg.signatures(v1.ref)[0].bundle
    other = write_lora_folder(tmp_path / "other", seed=3)
    v2 = env.reg.push(other, "other")
    with pytest.raises(SignatureError, match="does not cover other@1's files.*changed"):
        env.reg.attach_signature(v2.ref, bundle)
    assert env.reg.signatures(v2.ref) == []
    # a folder whose model.sig no longer matches its files is refused before anything is stored
    signed = env.reg.pull(v1.ref, tmp_path / "signed")
    (signed / "README.md").write_text("# added after signing\n")
    with pytest.raises(SignatureError, match="files not signed: README.md"):
        env.reg.push(signed, "copy")
    assert [v.name for v in env.reg.list()] == ["legal", "other"]
    with pytest.raises(SignatureError, match="not a model-signing bundle"):
        env.reg.attach_signature(v1.ref, '{"mediaType": "nope"}')


def test_certificate_signing_with_identities(env, adapter, keys, tmp_path):
    v = env.reg.push(adapter, "legal")
    sig = env.reg.sign(
        v.ref,
        key=keys / "ca-leaf.key.pem",
        certificate=keys / "ca-leaf.pem",
        chain=[keys / "ca.pem"],
    )
    assert sig.signer == "cert:release@example.com"
    env.reg.trust_policy = cert_policy(keys)
    assert verify_signatures(env.reg.pull(v.ref, tmp_path / "a"), cert_policy(keys)).ok
    env.reg.trust_policy = cert_policy(keys, identity="someone@example.com")
    with pytest.raises(SignatureError, match="identity.*not in the trust policy"):
        env.reg.pull(v.ref, tmp_path / "b")
    rogue = env.reg.push(write_lora_folder(tmp_path / "rogue", seed=5), "rogue")
    env.reg.sign(
        rogue.ref,
        key=keys / "rogue-ca-leaf.key.pem",
        certificate=keys / "rogue-ca-leaf.pem",
        chain=[keys / "rogue-ca.pem"],
    )
    env.reg.trust_policy = cert_policy(keys)
    with pytest.raises(SignatureError, match="does not chain to the trusted CA"):
        env.reg.pull(rogue.ref, tmp_path / "c")


def test_signed_version_can_be_removed(env, adapter, keys):
    v = env.reg.push(adapter, "legal")
    env.reg.sign(v.ref, key=keys / "release.key.pem")
    assert [r.ref for r in env.reg.rm(v.ref)] == ["legal@1"]
    assert env.reg.list() == []


# -- travel between registries ---------------------------------------------------------------
def test_a_signed_push_is_never_seen_without_its_signature(
    store, adapter, keys, tmp_path, after_next_commit
):
    v = store.push(adapter, "legal")
    store.sign(v.ref, key=keys / "release.key.pem")
    signed = store.pull(v.ref, tmp_path / "signed")  # carries model.sig
    seen = []
    with after_next_commit(lambda: seen.append(store.signatures("copy@1"))):
        copy = store.push(signed, "copy")
    assert copy.ref == "copy@1" and [s.signer for s in seen[0]] == [
        sig.signer for sig in store.signatures(v.ref)
    ]
    # the same bytes pushed again with a signature: it is added to the version holding them
    plain = store.push(adapter, "plain")
    assert store.signatures(plain.ref) == []
    assert store.push(signed, "plain").ref == plain.ref
    assert len(store.signatures(plain.ref)) == 1
    assert store.push(signed, "plain").ref == plain.ref  # and not twice
    assert len(store.signatures(plain.ref)) == 1


def test_signature_survives_push_pull_push(tmp_path, lr_home, adapter, keys, service_missing):
    policy = key_policy(keys)
    first = open_registry(f"sqlite:///{tmp_path / 'first' / 'registry.db'}")
    v = first.push(adapter, "legal")
    first.sign(v.ref, key=keys / "release.key.pem")
    server_store = open_registry(f"sqlite:///{tmp_path / 'second' / 'registry.db'}")
    with ThreadServer(server_store) as srv:
        remote = RemoteRegistry(srv.url, token=srv.tokens["write"], trust_policy=policy)
        pulled = first.pull(v.ref, tmp_path / "pulled")
        v2 = remote.push(pulled, "legal")  # model.sig travels with the folder
        assert v2.digest == v.digest
        assert [s.digest for s in remote.signatures(v2.ref)] == [
            s.digest for s in first.signatures(v.ref)
        ]
        again = remote.pull(v2.ref, tmp_path / "again")  # verified under the client's policy
        try:
            with temporary_postgres() as url:
                third = open_registry(url, blob_dir=tmp_path / "third", trust_policy=policy)
                v3 = third.push(again, "legal")
                assert verify_signatures(third.local_path(v3.ref), policy).ok
                third.close()
        except PostgresUnavailable as exc:
            service_missing(str(exc))
        remote.close()
    server_store.close()
    first.close()


# -- HTTP endpoints --------------------------------------------------------------------------
def test_http_signature_endpoints(tmp_path, lr_home, adapter, keys):
    store = open_registry(f"sqlite:///{tmp_path / 'srv' / 'registry.db'}")
    v = store.push(adapter, "legal")
    store.sign(v.ref, key=keys / "release.key.pem")
    bundle = store.signatures(v.ref)[0].bundle
    with ThreadServer(store) as srv:
        read = {"authorization": f"Bearer {srv.tokens['read']}"}
        write = {"authorization": f"Bearer {srv.tokens['write']}"}
        got = httpx.get(f"{srv.url}/v1/signatures", params={"ref": "legal@1"}, headers=read)
        assert got.status_code == 200 and got.json()[0]["bundle"] == bundle
        post = f"{srv.url}/v1/signatures"
        denied = httpx.post(post, params={"ref": "legal@1"}, json={"bundle": bundle}, headers=read)
        assert denied.status_code == 403
        with pytest.raises(AuthError, match="scope"):
            RemoteRegistry(srv.url, token=srv.tokens["read"]).sign(
                "legal@1", key=keys / "other.key.pem"
            )
        for body in ({"bundle": "{}"}, {"bundle": "not json"}, {"bundle": 5}, {"x": 1}):
            r = httpx.post(post, params={"ref": "legal@1"}, json=body, headers=write)
            assert r.status_code == 422, (body, r.status_code)
            assert str(tmp_path) not in r.text
        r = httpx.post(post, params={"ref": "legal@9"}, json={"bundle": bundle}, headers=write)
        assert r.status_code == 404
        other = store.push(write_lora_folder(tmp_path / "other", seed=3), "other")
        r = httpx.post(post, params={"ref": other.ref}, json={"bundle": bundle}, headers=write)
        assert r.status_code == 422 and "does not cover other@1's files" in r.text
        manifest = {"files": [f.to_dict() for f in other.files], "signatures": [bundle]}
        r = httpx.post(f"{srv.url}/v1/adapters/x/versions", json=manifest, headers=write)
        assert r.status_code == 422 and r.json()["error"] == "SignatureError"
        assert store.signatures(other.ref) == [] and "x" not in store.names()
        r = httpx.post(post, params={"ref": "legal@1"}, json={"bundle": bundle}, headers=write)
        assert r.status_code == 201  # the same bundle again: stored once
        assert len(store.signatures(v.ref)) == 1
    store.close()


# -- policy, settings and CLI ----------------------------------------------------------------
def test_policy_file_and_setting(tmp_path, lr_home, keys, adapter, monkeypatch):
    shutil.copy(keys / "release.pub.pem", tmp_path / "release.pub.pem")
    (tmp_path / "trust.json").write_text(json.dumps({"public_keys": ["release.pub.pem"]}))
    assert TrustPolicy.from_file(tmp_path / "trust.json").public_keys == [
        tmp_path / "release.pub.pem"
    ]
    for bad, match in [
        ({}, "needs public_keys"),
        ({"public_keys": ["missing.pem"]}, "'missing.pem' is not a readable file"),
        ({"public_keys": ["release.pub.pem"], "identities": ["a@b"]}, "go together"),
        ({"public_keys": ["trust.json"]}, "not a PEM public key"),
        ({"keys": []}, "invalid"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SignatureError, match=match) as info:
            TrustPolicy.from_file(tmp_path / "bad.json")
        assert str(tmp_path) not in str(info.value)
    monkeypatch.setenv("LORAROUTE_TRUST_POLICY", str(tmp_path / "trust.json"))
    reg = open_registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    assert reg.trust_policy is not None
    v = reg.push(adapter, "legal")
    with pytest.raises(SignatureError, match="unsigned"):
        reg.local_path(v.ref)
    reg.close()


def test_cli_sign_and_verify(tmp_path, lr_home, adapter, keys):
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    runner = CliRunner()
    assert (
        runner.invoke(main, ["push", str(adapter), "--name", "legal", "--registry", url]).exit_code
        == 0
    )
    (tmp_path / "trust.json").write_text(
        json.dumps({"public_keys": [str(keys / "release.pub.pem")]})
    )
    policy = ["--trust-policy", str(tmp_path / "trust.json")]
    out = runner.invoke(main, ["verify", "legal@1", "--registry", url, *policy])
    assert out.exit_code == 1 and "legal@1: unsigned" in out.output
    out = runner.invoke(
        main, ["pull", "legal@1", "-o", str(tmp_path / "p"), "--registry", url, *policy]
    )
    assert (
        out.exit_code == 1 and "legal@1 is unsigned" in out.output and "Traceback" not in out.output
    )
    out = runner.invoke(
        main, ["sign", "legal@1", "--key", str(keys / "release.key.pem"), "--registry", url]
    )
    assert out.exit_code == 0 and out.output.startswith("signed legal@1 as key:")
    out = runner.invoke(main, ["verify", "legal@1", "--registry", url, *policy])
    assert out.exit_code == 0 and "trusted" in out.output and "NOT" not in out.output
    out = runner.invoke(main, ["verify", "legal@1", "--registry", url, "--json"])
    data = json.loads(out.output)
    assert data["ok"] and data["signatures"][0]["checks"][0]["trusted"] is None


def test_sign_with_encrypted_key_and_clear_key_errors(
    tmp_path, lr_home, adapter, keys, monkeypatch
):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ec_key = ec.generate_private_key(ec.SECP256R1())
    enc = tmp_path / "enc.key.pem"
    enc.write_bytes(
        ec_key.private_bytes(
            s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pw")
        )
    )
    rsa_key = tmp_path / "rsa.key.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()
        )
    )
    url = f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    reg = open_registry(url)
    v = reg.push(adapter, "legal")
    with pytest.raises(SignatureError, match="'enc.key.pem'.*encrypted"):
        reg.sign(v.ref, key=enc)
    with pytest.raises(SignatureError, match="'rsa.key.pem': it is not an elliptic-curve key"):
        reg.sign(v.ref, key=rsa_key)
    assert reg.signatures(v.ref) == []
    out = CliRunner().invoke(main, ["sign", "legal@1", "--key", str(enc), "--registry", url])
    assert out.exit_code != 0 and "encrypted" in out.output
    monkeypatch.setenv("LORAROUTE_SIGNING_KEY_PASSWORD", "pw")
    out = CliRunner().invoke(main, ["sign", "legal@1", "--key", str(enc), "--registry", url])
    assert out.exit_code == 0, out.output
    assert len(reg.signatures(v.ref)) == 1
    reg.close()
