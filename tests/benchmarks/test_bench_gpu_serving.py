"""bench_gpu_serving's workload, goals and report on made-up figures (CPU only; the GPU run
itself is ``--check``-ed by hand on CPU and run on a GPU)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_gpu_serving
        import gpu_serving_workload

        yield bench_gpu_serving, gpu_serving_workload
    finally:
        sys.path.remove(str(BENCH))


def test_the_workload_is_seeded_log_uniform_and_zipf(bench):
    _, wl = bench
    names = [f"a{i}" for i in range(64)]
    reqs = wl.workload(400, adapters=names, seed=3)
    again = wl.workload(400, adapters=names, seed=3)
    assert [r.prompt for r in reqs] == [r.prompt for r in again]
    assert all(32 <= len(r.prompt) <= 2048 and 16 <= r.new_tokens <= 512 for r in reqs)
    lengths = sorted(len(r.prompt) for r in reqs)
    assert lengths[len(lengths) // 2] < 600  # log-uniform: the median near sqrt(32 * 2048)
    counts = Counter(r.adapter for r in reqs)
    assert counts["a0"] > counts["a1"] > counts.get("a40", 0)
    assert wl.pct([1.0, 2.0, 3.0, 4.0], 50) in (2.0, 3.0) and wl.pct([5.0], 99) == 5.0


def _result(base=5400.0, a32=4700.0, hf=3000.0, ttft99=400.0, failed=0, rows=256):
    fixed = {
        "base_alone": {"decode_tok_s": base, "e2e_tok_s": 5000.0},
        "adapters_1": {"decode_tok_s": base, "e2e_tok_s": 5000.0, "paired_ratio": 1.0},
        "adapters_8": {"decode_tok_s": base * 0.95, "e2e_tok_s": 4800.0, "paired_ratio": 0.95},
        "adapters_32": {"decode_tok_s": a32, "e2e_tok_s": 4500.0, "paired_ratio": a32 / base},
    }
    run = {
        "rate_rps": 10.0, "requests": 200, "completed": 200 - failed, "failed": failed,
        "request_rate_rps": 10.0, "output_tok_s": 3000.0, "duration_s": 20.0,
        "ttft_ms": {"p50": 90.0, "p99": ttft99}, "tpot_ms": {"p50": 12.0, "p99": 30.0},
        "e2e_ms": {"p50": 2000.0, "p99": 6000.0}, "max_rows": 120, "kv_blocks_peak": 9000,
        "kv_blocks": 34000, "preemptions": 0,
    }  # fmt: skip
    memory = dict(
        run, requests=256, completed=256, failed=0, max_rows=rows, context_tokens=2048, new_tokens=1024,
        kv_cache_gib=66.0, slot_stack_gib=10.5, resident_adapters=128, peak_allocated_gib=110.0,
        device_total_gib=139.0,
    )  # fmt: skip
    return {
        "floors": {
            "gemm_floor_tok_s": 7500.0,
            "gemm_step_ms": 4.27,
            "read_floor_tok_s": 8800.0,
            "weight_bytes": 15.0e9,
            "reduction_bandwidth_tb_s": 4.1,
            "gemm_bandwidth_tb_s": 3.5,
        },  # fmt: skip
        "fixed": fixed,
        "hf": {"fixed": {"e2e_tok_s": hf, "decode_tok_s": 3400.0, "compiled": True}},
        "serving": {
            "idle_ttft": {"p50_ms": 60.0, "p99_ms": 100.0, "n": 16},
            "adapters_64_rate_80": run,
        },
        "memory": memory,
    }


def test_goals_read_the_figures_the_issue_names(bench):
    b, _ = bench
    goals = b.goals(_result())
    met = {name.split(" ")[0] + " " + name.split(" ")[1]: g["met"] for name, g in goals.items()}
    assert len(goals) == 5
    assert met == {
        "base decode": True,  # 5,400 / 7,500 = 72%
        "32 distinct": False,  # 0.87x
        "end to": True,  # 5,000 / 3,000
        "Poisson at": True,  # 400 ms <= 5 x 100 ms
        ">= 256": True,
    }
    # 32 rank-16 adapters on all 7 modules of 32 layers: 2.68 GB a step, 0.65 ms at 4.1 TB/s,
    # on top of a 32 / 5,400 s = 5.93 ms step: at most 0.901x of base alone
    assert b.adapter_step_bytes(32, 32) == 2 * 16 * 81920 * 32 * 32
    assert "bound it at 0.901x" in goals["32 distinct adapters >= 0.9x base alone"]["detail"]
    worse = b.goals(_result(base=5000.0, hf=3500.0, ttft99=600.0, failed=1, rows=200))
    assert not any(g["met"] for name, g in worse.items() if not name.startswith("32"))
    res = _result()
    res["goals"] = b.goals(res)
    page = b.markdown(res)
    assert "**met**" in page and "**not met**" in page and "72% of the GEMM floor" in page


def test_int8_adapter_weights_are_a_goal_of_their_own_and_a_row(bench):
    b, _ = bench
    res = _result()
    res["fixed"]["adapters_32_int8"] = {
        "decode_tok_s": 4900.0, "e2e_tok_s": 4700.0, "paired_ratio": 0.91,
    }  # fmt: skip
    goals = b.goals(res)
    assert len(goals) == 6
    assert not goals["32 distinct adapters >= 0.9x base alone"]["met"]  # bf16 stands alone
    int8 = goals["32 distinct adapters, int8 adapter weights (an option), >= 0.9x base alone"]
    assert int8["met"] and "4,900 / 5,400 = 0.907x" in int8["detail"]
    res["goals"] = goals
    assert "| ours, 32 distinct adapters, int8 adapter weights | 4,900 | 4,700 |" in b.markdown(res)
