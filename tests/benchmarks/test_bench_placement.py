"""The placement simulator (``bench_placement.py``) on cases small enough to work out by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim():
    path = ROOT / "benchmarks" / "bench_placement.py"
    spec = importlib.util.spec_from_file_location("bench_placement", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def alternating(n: int, adapters: int = 2, gap: float = 10.0) -> list[tuple[float, int]]:
    """``n`` requests far apart (each finishes before the next), adapters in turn."""
    return [(i * gap, i % adapters) for i in range(n)]


def test_affinity_loads_each_adapter_once_and_splits_them(sim):
    # 2 replicas of 1 slot, requests a, b, a, b, ...: the first a goes anywhere, b to the
    # replica with fewer adapters (the empty one); from then on each finds its holder
    res = sim.simulate("affinity", alternating(20), replicas=2, slots=1, host_slots=0)
    assert res.device_loads == 2 and res.storage_loads == 2
    assert res.imbalance == pytest.approx(1.0)  # 10 requests each, same work
    assert res.spill_rate == 0


def test_one_replica_one_slot_loads_on_every_switch(sim):
    for policy in sim.POLICIES:  # one replica: every policy is the same
        res = sim.simulate(policy, alternating(10), replicas=1, slots=1, host_slots=4)
        assert res.device_loads == 10  # a, b, a, ...: each evicts the other
        assert res.storage_loads == 2  # the host tier keeps both after their first read


def test_loads_queue_behind_each_other(sim):
    # three adapters at once on one replica: the loads run one after another (Serve's
    # multiplexer loads under a lock), so they wait 1, 2 and 3 load times
    costs = sim.Costs(host_to_device_ms=1.0, storage_to_host_ms=0.0)
    res = sim.simulate("random", [(0.0, 0), (0.0, 1), (0.0, 2)], replicas=1, slots=4, costs=costs)
    assert res.load_delay_p50_ms == pytest.approx(2.0)
    assert res.load_delay_p99_ms == pytest.approx(2.98)  # between 2 and 3, linear


def test_random_placement_hits_slots_over_adapters_for_uniform_popularity(sim):
    # uniform popularity (Zipf 0): an LRU cache of C of N equally likely items hits C/N
    arrivals = sim.zipf_arrivals(10, 0.0, rate=1.0, n=20_000, seed=3)
    res = sim.simulate("random", arrivals, replicas=2, slots=2, warmup=1000, seed=3)
    assert res.device_loads_per_request == pytest.approx(1 - 2 / 10, abs=0.02)


def test_least_loaded_spreads_simultaneous_requests_evenly(sim):
    # 8 long requests at once over 4 replicas: two each
    res = sim.simulate("least_loaded", [(0.0, i) for i in range(8)], replicas=4, slots=4)
    assert res.imbalance == pytest.approx(1.0)


def test_step_cost_interpolates_the_measured_points(sim):
    costs = sim.Costs(step_ms=((1, 10.0), (4, 12.0), (16, 13.0)))
    assert costs.step(1) == 10.0 and costs.step(4) == 12.0 and costs.step(64) == 13.0
    assert costs.step(2) == pytest.approx(11.0)  # halfway in log2 between 1 and 4
    assert costs.step(8) == pytest.approx(12.5)


def test_unknown_policy_is_refused(sim):
    with pytest.raises(ValueError, match="'nearest' is not one of affinity"):
        sim.simulate("nearest", [(0.0, 0)], replicas=1, slots=1)
