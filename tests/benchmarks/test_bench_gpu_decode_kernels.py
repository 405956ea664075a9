"""``bench_gpu_decode_kernels.py --profile``: a decode step's device time split by kind of
kernel, read from a kernel trace (CPU only: the trace here is made up)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_gpu_decode_kernels", ROOT / "benchmarks" / "bench_gpu_decode_kernels.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # it puts benchmarks/ on sys.path for bench_gpu
    return module


def step_trace(steps: int) -> list[tuple[float, float, str]]:
    """``steps`` made-up decode steps of 40 us: a GEMM with a LoRA kernel beside it and 2 us
    past it, attention, another GEMM, a small kernel; after a 100 us prefill."""
    out = [(0.0, 100.0, "gemm")]
    t = 100.0
    for _ in range(steps):
        out += [
            (t, t + 10, "gemm"),
            (t + 2, t + 12, "lora"),
            (t + 13, t + 19, "attention"),
            (t + 21, t + 31, "gemm"),
            (t + 32, t + 34, "other"),
        ]
        t += 40
    return sorted(out)


def test_busy_time_counts_overlapping_kernels_once(bench):
    assert bench.busy_us([(0, 5), (3, 8), (10, 12), (11, 11.5)]) == 10
    assert bench.busy_us([]) == 0


def test_kernels_are_sorted_into_kinds_by_name(bench):
    kinds = {
        "sm90_xmma_gemm_bf16bf16_bf16f32": "gemm",
        "nvjet_tst_64x8_64x16_4x1_v_bz_TNN": "gemm",
        "_lora_shrink_rows_kernel": "lora",
        "_l2_prefetch_kernel": "hints",
        "_paged_attention_kernel": "attention",
        "_add_rmsnorm_kernel": "other",
    }
    assert {name: bench.kind_of(name) for name in kinds} == kinds


def test_a_step_profile_is_the_difference_of_two_runs(bench, monkeypatch):
    """Prefill and start-up cancel in the difference; the LoRA kernel's 2 us past its GEMM
    and the attention stretch (GEMM end to next GEMM start) are read per step."""
    monkeypatch.setattr(bench, "kernel_trace", lambda engine, names, ids, n: step_trace(n))
    got = bench.profile_step(None, None, None, steps=4)
    assert got["kernel_us"] == {"gemm": 20, "lora": 10, "hints": 0, "attention": 6, "other": 2}
    assert (got["busy_us"], got["gemm_busy_us"], got["lora_outside_gemm_us"]) == (30, 20, 2)
    assert (got["attention_gap_us"], got["attention_kernels_a_step"]) == (11, 1)


@pytest.mark.parametrize("name", ["gpu_decode_profile", "gpu_decode_l2_attention"])
def test_committed_results_render_as_committed(bench, name):
    result = json.loads((RESULTS / f"{name}.json").read_text())
    assert bench.markdown(result) == (RESULTS / f"{name}.md").read_text()
