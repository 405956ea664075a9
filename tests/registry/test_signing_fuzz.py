"""Property-based fuzzing of signature bundles: a mutated bundle (its JSON or its signed
statement) is reported as a bad signature or refused with SignatureError, never another
exception, whether or not a trust policy verifies it. Bounded to a few seconds."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraroute.registry import SignatureError, TrustPolicy
from loraroute.registry.signing import check_signatures, describe_bundle, folder_digests
from loraroute.registry.testing import write_lora_folder

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["AAAA", "!!", "files", "sha256", "../x", "model.sig"])
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(bundle text, the folder's digests, a policy trusting the signer)."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    from loraroute.registry.signing import sign_folder

    d = tmp_path_factory.mktemp("fuzz-sign")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "k.pem").write_bytes(
        key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    )
    (d / "p.pem").write_bytes(
        key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    )
    folder = write_lora_folder(d / "legal")
    bundle = sign_folder(folder, d / "k.pem")
    return bundle, folder_digests(folder), TrustPolicy(public_keys=[Path(d / "p.pem")])


def mutate(doc, path: list, value):
    """Replace (or, with value ..., delete) the node at ``path`` (indices taken modulo)."""
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            return None if value is ... else value
    last = path[-1] if path else 0
    if isinstance(node, dict) and node:
        k = sorted(node)[last % len(node)]
        if value is ...:
            del node[k]
        else:
            node[k] = value
    elif isinstance(node, list) and node:
        node[last % len(node)] = None if value is ... else value
    else:
        return None if value is ... else value
    return doc


def check(bundle: str, files, policy) -> None:
    for p in (None, policy):
        report = check_signatures("legal@1", files, [bundle], p)
        assert len(report.checks) == 1
    with contextlib.suppress(SignatureError):
        describe_bundle(bundle)


@FUZZ
@given(path=st.lists(st.integers(0, 7), max_size=5), value=values | st.just(...))
def test_mutated_bundle_json(signed, path, value):
    bundle, files, policy = signed
    doc = mutate(json.loads(bundle), path, value)
    check(json.dumps(doc), files, policy)


@FUZZ
@given(path=st.lists(st.integers(0, 7), min_size=1, max_size=5), value=values | st.just(...))
def test_mutated_signed_statement(signed, path, value):
    bundle, files, policy = signed
    doc = json.loads(bundle)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement = mutate(copy.deepcopy(statement), path, value)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    check(json.dumps(doc), files, policy)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(signed, text):
    _, files, policy = signed
    check(text, files, policy)
