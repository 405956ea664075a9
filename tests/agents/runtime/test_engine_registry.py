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
