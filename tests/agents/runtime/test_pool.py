"""Resident pool: LRU by count and bytes, pinning, digest keying."""

from __future__ import annotations

import pytest

from loraroute.agents.errors import PoolFullError
from loraroute.agents.runtime.engine import Engine
from loraroute.agents.runtime.pool import AdapterPool


def test_lru_by_count_and_bytes():
    pool = AdapterPool(max_resident=2, max_bytes=100)
    assert pool.reserve("d1", "a", nbytes=40, rank=4) == (1, [])
    assert pool.reserve("d2", "b", nbytes=40, rank=4) == (2, [])
    pool.get("d1")  # a is now the most recent
    slot, evicted = pool.reserve("d3", "c", nbytes=40, rank=4)
    assert [e.ref for e in evicted] == ["b"] and slot == 2
    slot, evicted = pool.reserve("d4", "d", nbytes=90, rank=4)  # bytes force out both others
    assert {e.ref for e in evicted} == {"a", "c"}
    assert [e.ref for e in pool.entries()] == ["d"]


def test_pinned_and_in_use_adapters_stay():
    pool = AdapterPool(max_resident=2)
    pool.reserve("d1", "a", nbytes=1, rank=4)
    pool.reserve("d2", "b", nbytes=1, rank=4)
    pool.pin("d1")
    pool.acquire("d2")
    with pytest.raises(PoolFullError, match="pinned or in use"):
        pool.reserve("d3", "c", nbytes=1, rank=4)
    pool.release("d2")
    _, evicted = pool.reserve("d3", "c", nbytes=1, rank=4)
    assert [e.ref for e in evicted] == ["b"]
    with pytest.raises(PoolFullError, match="max_bytes"):
        AdapterPool(max_resident=2, max_bytes=10).reserve("x", "x", nbytes=11, rank=1)


def test_engine_evicts_lru_and_reloads_by_digest(tiny_base, tiny_adapter_factory, lr_home):
    with Engine(tiny_base, settings=lr_home, device="cpu", max_resident=2) as engine:
        a, b, c = (tiny_adapter_factory(s) for s in (11, 12, 13))
        engine.load_adapter_folder(a, name="a", pin=True)
        engine.load_adapter_folder(b, name="b")
        engine.load_adapter_folder(c, name="c")  # evicts b (a is pinned)
        assert [e["ref"] for e in engine.resident()] == ["a", "c"]
        out_c = engine.generate("hi", adapter="c", max_new_tokens=6)
        # the name "c" re-pointed to other weights serves the new digest, never the old one
        engine.unpin("a")
        entry = engine.load_adapter_folder(b, name="c")
        again = engine.generate("hi", adapter="c", max_new_tokens=6)
        assert again.adapter_digest == entry.digest != out_c.adapter_digest
