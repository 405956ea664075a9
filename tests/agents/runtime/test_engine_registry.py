"""The engine with the real registry: refs, aliases re-pointed, wrong-base refusal, unknown refs."""

from __future__ import annotations

import pytest

import loraroute.registry as registry_mod
from loraroute.agents.errors import IncompatibleAdapterError
from loraroute.agents.runtime.engine import Engine


@pytest.fixture
def setup(lr_home, tiny_base, tiny_adapter_factory):
    from loraroute.models import fingerprint

    reg = registry_mod.open_registry(settings=lr_home)
    fp = fingerprint(tiny_base, settings=lr_home)
    v1 = reg.push(tiny_adapter_factory(1), "legal", domain="law", base_fingerprint=fp)
    v2 = reg.push(tiny_adapter_factory(2), "legal", domain="law", base_fingerprint=fp)
    reg.alias_set("legal", "prod", 1)
    engine = Engine(tiny_base, registry=reg, settings=lr_home, device="cpu", max_resident=4)
    yield engine, reg, v1, v2
    engine.close()


def test_alias_repointing_never_serves_stale_weights(setup):
    engine, reg, v1, v2 = setup
    first = engine.generate("hello", adapter="legal:prod", max_new_tokens=6)
    assert (first.adapter_ref, first.adapter_digest) == (v1.ref, v1.digest)
    reg.alias_set("legal", "prod", 2)
    second = engine.generate("hello", adapter="legal:prod", max_new_tokens=6)
    assert (second.adapter_ref, second.adapter_digest) == (v2.ref, v2.digest)
    direct = engine.generate("hello", adapter=v2.ref, max_new_tokens=6)
    assert direct.token_ids == second.token_ids
    assert {e["digest"] for e in engine.resident()} == {v1.digest, v2.digest}


def test_recorded_base_fingerprint_is_checked(setup, other_tiny_base, tmp_path):
    from loraroute.models import fingerprint
    from loraroute.testing import make_tiny_adapter

    engine, reg, _, _ = setup
    other_fp = fingerprint(other_tiny_base)
    folder = make_tiny_adapter(other_tiny_base, tmp_path / "o", seed=9)
    reg.push(folder, "medical", base_fingerprint=other_fp)
    with pytest.raises(IncompatibleAdapterError) as info:
        engine.load_adapter("medical")
    assert other_fp in str(info.value) and engine.base_fingerprint in str(info.value)


def test_unknown_ref_is_the_registry_error(setup):
    engine, *_ = setup
    with pytest.raises(KeyError, match="legl"):
        engine.generate("hi", adapter="legl", max_new_tokens=2)


def test_a_checkout_altered_at_the_same_size_is_not_served(setup):
    """The registry's cached checkout is checked by size; the engine checks the bytes it reads
    against the version's digests, so a same-size tamper is refused, not served."""
    engine, reg, v1, _ = setup
    folder = reg.local_path(v1)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor value: same size, still valid safetensors
    weights.write_bytes(bytes(data))
    with pytest.raises(IncompatibleAdapterError, match="does not match the registry's digest"):
        engine.load_adapter(v1.ref)
    assert engine.resident() == []


def test_non_finite_weights_are_refused_at_load(setup, tiny_adapter, tmp_path):
    """An adapter whose weights hold NaN would make every answer with it fail: refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    engine, *_ = setup
    bad = tmp_path / "nan"
    shutil.copytree(tiny_adapter, bad)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleAdapterError, match="NaN|finite"):
        engine.load_adapter_folder(bad, base_fingerprint=engine.base_fingerprint)


def test_a_trust_policy_refuses_unsigned_folders_and_admits_signed_ones(
    setup, tiny_adapter, tmp_path
):
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    engine, reg, v1, _ = setup
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "release.key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"public_keys": [str(pub)]}))
    engine.settings = engine.settings.model_copy(update={"trust_policy": str(policy)})
    with pytest.raises(IncompatibleAdapterError, match="unsigned"):
        engine.load_adapter_folder(tiny_adapter, base_fingerprint=engine.base_fingerprint)
    assert engine.resident() == []
    reg.sign(v1.ref, key=private)
    signed = reg.pull(v1.ref, tmp_path / "signed")  # the folder carries model.sig
    engine.load_adapter_folder(signed, base_fingerprint=engine.base_fingerprint)
    assert "signed" in {e["ref"] for e in engine.resident()}
    (signed / "adapter_config.json").write_text(
        (signed / "adapter_config.json").read_text().replace("\n", "\n ", 1)
    )  # altered after signing
    with pytest.raises(IncompatibleAdapterError):
        engine.load_adapter_folder(signed, name="altered", base_fingerprint=engine.base_fingerprint)


def test_a_bare_digest_the_engine_no_longer_holds_is_not_looked_up_in_the_registry(setup):
    """Evicting a digest that already left the pool does nothing (Ray Serve's replicas evict
    by digest when Serve's cache drops one, which the pool may have dropped first); asking to
    serve one is a clear unknown-adapter error, not the registry's reading of ``sha256`` as
    an adapter name."""
    from loraroute.agents.errors import UnknownAdapterError

    engine, _, v1, v2 = setup
    engine.load_adapter(v1.ref)
    engine.evict(v1.digest)
    assert engine.resident() == []
    engine.evict(v1.digest)  # gone already: nothing to do
    engine.evict(v2.digest)  # never loaded
    with pytest.raises(UnknownAdapterError, match="no adapter with digest") as info:
        engine.load_adapter(v2.digest)
    assert "'sha256'" not in str(info.value)
