"""The CPU tier behind the device slots: LRU movement between tiers, on the CPU device."""

from __future__ import annotations

import shutil

import pytest
import torch

from loraroute.agents.errors import PoolFullError, UnknownAdapterError
from loraroute.agents.lora import read_adapter
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.pool import AdapterPool


def test_host_tier_is_lru_and_keeps_resident_adapters():
    pool = AdapterPool(max_resident=1, max_host=2)
    pool.host_put("d1", "a", "p1", nbytes=10, rank=4)
    pool.reserve("d1", "a", nbytes=10, rank=4)  # a is on the device too
    pool.host_put("d2", "b", "p2", nbytes=10, rank=4)
    dropped = pool.host_put("d3", "c", "p3", nbytes=10, rank=4)
    assert [e.ref for e in dropped] == ["b"]  # a is resident: never dropped
    assert [e.ref for e in pool.host_entries()] == ["a", "c"]
    pool.host_get("d1")  # touch: a becomes the most recent
    pool.evict("d1")
    dropped = pool.host_put("d4", "d", "p4", nbytes=10, rank=4)
    assert [e.ref for e in dropped] == ["c"]
    assert pool.host_get("d1").payload == "p1" and pool.host_drops == 2


def test_host_tier_bytes_bound_and_off_switch():
    pool = AdapterPool(max_resident=2, max_host=10, max_host_bytes=25)
    pool.host_put("d1", "a", "p", nbytes=10, rank=4)
    pool.host_put("d2", "b", "p", nbytes=10, rank=4)
    dropped = pool.host_put("d3", "c", "p", nbytes=10, rank=4)
    assert [e.ref for e in dropped] == ["a"] and pool.host_bytes == 20
    off = AdapterPool(max_resident=2)  # max_host=0: no CPU tier
    assert off.host_put("d1", "a", "p", nbytes=1, rank=1) == [] and off.host_entries() == []
    with pytest.raises(ValueError, match="max_host"):
        AdapterPool(max_host=-1)


@pytest.fixture
def copies(tiny_adapter_factory, tmp_path):
    """Adapter folders we may delete, to prove a reload comes from the CPU tier."""
    out = {}
    for name, kw in {
        "a": dict(seed=21),
        "b": dict(seed=22, r=8, target_modules=("q_proj", "k_proj", "v_proj", "down_proj")),
        "c": dict(seed=23, r=2),
        "d": dict(seed=24),
        "e": dict(seed=25, r=16, target_modules=("gate_proj", "up_proj")),
    }.items():
        seed = kw.pop("seed")
        out[name] = shutil.copytree(tiny_adapter_factory(seed, **kw), tmp_path / name)
    return out


def test_adapters_move_between_tiers_and_keep_their_numbers(tiny_base, lr_home, copies):
    ids = torch.randint(3, 300, (1, 9), generator=torch.Generator().manual_seed(3))
    with Engine(
        tiny_base, settings=lr_home, device="cpu", max_resident=2, max_cpu_adapters=3
    ) as engine:
        before = {}
        for name in ("a", "b", "c"):
            engine.load_adapter_folder(copies[name], name=name)
            before[name] = engine.logits(ids, [name])
        tiers = engine.tiers()
        assert [e["ref"] for e in tiers["device"]] == ["b", "c"]
        assert {e["ref"] for e in tiers["cpu"]} == {"a", "b", "c"}
        for name in ("a", "b", "c"):
            shutil.rmtree(copies[name])  # reloads can only come from the CPU tier now
        for pair in (("a", "c"), ("b", "a"), ("c", "b")):  # each pair moves one adapter back
            mixed = engine.logits(ids.repeat(2, 1), list(pair))
            for i, name in enumerate(pair):
                torch.testing.assert_close(mixed[i : i + 1], before[name], atol=1e-5, rtol=0)
        assert engine.pool.evictions >= 4
        with pytest.raises(PoolFullError, match="in use"):  # three adapters, two slots
            engine.logits(ids.repeat(3, 1), ["a", "b", "c"])
        assert all(e["in_use"] == 0 for e in engine.resident())
        got = engine.generate("hello", adapter="b", max_new_tokens=4)
        assert got.adapter_ref == "b"
        # two more adapters: the CPU tier (3) drops its least recent non-resident entry
        engine.load_adapter_folder(copies["d"], name="d")
        engine.load_adapter_folder(copies["e"], name="e")
        cpu = {e["ref"] for e in engine.tiers()["cpu"]}
        assert len(cpu) == 3 and {"d", "e"} <= cpu
        gone = ({"a", "b", "c"} - cpu).pop()
        with pytest.raises(UnknownAdapterError, match="CPU tier"):
            engine.generate("hello", adapter=gone, max_new_tokens=2)


def test_in_memory_adapters_and_from_model(tiny_base, lr_home, tiny_adapter_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_adapter_factory(26, r=8)
    ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(4))
    with Engine(tiny_base, settings=lr_home, device="cpu") as engine:
        engine.load_adapter_folder(folder, name="x")
        want = engine.logits(ids, ["x", None])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    engine = Engine.from_model(model, tok, max_resident=2, max_cpu_adapters=4)
    try:
        assert engine.base_fingerprint.startswith("memory:sha256:")
        weights = read_adapter(folder)
        assert engine.add_adapter(weights, name="x", load=False) is None
        assert engine.resident() == [] and [e["ref"] for e in engine.tiers()["cpu"]] == ["x"]
        torch.testing.assert_close(engine.logits(ids, ["x", None]), want, atol=1e-5, rtol=0)
        assert [e["ref"] for e in engine.resident()] == ["x"]
        assert engine.generate("hi", adapter="x", max_new_tokens=3).adapter_ref == "x"
    finally:
        engine.close()
