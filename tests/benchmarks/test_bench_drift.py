"""``bench_drift.py --tiny`` (hashing encoder, two seeds) runs end to end on CLINC150 and writes
its results: a goals map, the decision-log cross-check agreeing with the array path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_drift_tiny(shared_data, tmp_path):
    out = tmp_path / "results"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_drift.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    res = json.loads((out / "drift.json").read_text())
    assert set(res["goals"]) >= {"shifted_flagged_within_500", "unshifted_quiet_over_5000"}
    assert all(isinstance(g["met"], bool) and g["detail"] for g in res["goals"].values())
    assert res["unshifted_checks"] == 2 * 101
    assert res["db_cross_check"]["matches_array_path"] is True
    assert (out / "drift.md").read_text().startswith("# Drift benchmark")
    assert (out / "drift.png").stat().st_size > 1000
