"""``bench_gpu.py --pool``: several full GPU runs read as one (CPU only: it reads JSON)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(rates: dict[str, list[float]], load_ms: float) -> dict:
    """A full run's JSON as bench_gpu writes it, with only what pooling reads."""
    thr: dict = {
        key: {
            "decode_tok_s": len(reps) / sum(1 / r for r in reps),  # equal tokens each rep
            "e2e_tok_s": 1000.0,
            "reps": reps,
            "runs": len(reps),
            "paired_ratio": reps[0] / 100,
        }
        for key, reps in rates.items()
    }
    thr["graphs"] = {"ours": {"captures": 1}}  # not a rate: left out
    return {
        "command": "python benchmarks/bench_gpu.py --out $OUT",
        "env": {"device": "test"},
        "config": {"registered": 1000},
        "throughput": thr,
        "load": {"median_ms": load_ms, "p90_ms": load_ms},
        "goals": {"g": {"met": False, "detail": "x"}},
    }


def test_pool_pools_tokens_over_seconds_and_judges_the_pooled_figures(bench_gpu):
    keys = ["base_engine", "ours_no_adapter", "peft_mixed_32"] + [
        f"ours_triton_{c}" for c in (1, 8, 32, 1000)
    ]
    one = run({k: [100.0] * 3 for k in keys} | {"ours_triton_32": [88.0] * 3}, 1.5)
    two = run({k: [100.0] * 3 for k in keys} | {"ours_triton_32": [94.0] * 3}, 2.5)
    pooled = bench_gpu.pool([one, two])
    t = pooled["throughput"]
    assert "graphs" not in t
    # 3 runs at 88 and 3 at 94 tok/s of equal tokens: 6 runs over their summed seconds
    assert t["ours_triton_32"]["decode_tok_s"] == pytest.approx(6 / (3 / 88 + 3 / 94))
    assert t["ours_triton_32"]["runs"] == 6
    assert t["ours_triton_32"]["per_run"] == [88.0, 94.0]
    assert t["ours_triton_32"]["paired_ratio"] == pytest.approx(0.91)
    goal = pooled["goals"][">= 0.9x base alone at every adapter count"]
    assert goal["met"]  # 90.9 pooled, though the first run alone was at 0.88
    assert pooled["load"]["median_ms"] == 2.5  # the slower run's load
    md = bench_gpu.pooled_markdown(pooled, ["a/one.json", "a/two.json"])
    assert "--pool a/one.json a/two.json" in md and "- one.json: missed" in md


def test_committed_pooled_results_are_what_pooling_the_committed_runs_gives(bench_gpu):
    committed = json.loads((RESULTS / "gpu_pooled.json").read_text())
    runs = [json.loads((RESULTS / name).read_text()) for name in ("gpu_run1.json", "gpu.json")]
    again = bench_gpu.pool(runs)
    assert again["goals"] == committed["goals"]
    for key, value in again["throughput"].items():
        assert committed["throughput"][key]["decode_tok_s"] == pytest.approx(value["decode_tok_s"])
