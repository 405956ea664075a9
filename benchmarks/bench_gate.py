"""The quality gate on the serving alias: a planted regressing version is refused and an
improving one accepted, on SQLite, on PostgreSQL and through the HTTP registry; and what the
gate costs a promotion.

Usage::

    .venv/bin/python benchmarks/bench_gate.py              # SQLite, PostgreSQL (if reachable), HTTP
    .venv/bin/python benchmarks/bench_gate.py --results 500 --reps 30

Each backend gets three versions of one adapter (tiny LoRA folders written with numpy):
``@1`` holds ``prod``; ``@2`` is the planted regression (accuracy 0.05 below ``@1`` on one
dataset, the rest equal); ``@3`` improves every metric. Every version carries ``--results``
eval results (datasets x metrics, re-evaluated a few times). The cost is the median time of
moving ``prod`` between two passing versions (gated) against moving ``staging`` (not gated),
and of ``gate_check`` alone. Writes benchmarks/results/gate.json and gate.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DIGEST = "sha256:" + "d" * 64


def results_for(version: int, n: int, *, regress: bool = False, improve: bool = False) -> list:
    """``n`` results: datasets x (accuracy, exact_match), each evaluated three times."""
    per = max(1, n // 6)
    out = []
    for d in range(per):
        digest = "sha256:" + f"{d:064x}"
        for metric in ("accuracy", "exact_match"):
            value = 0.70 + 0.01 * (d % 10)
            if regress and d == 0 and metric == "accuracy":
                value -= 0.05
            if improve:
                value += 0.02
            for _ in range(3):
                out.append(
                    {
                        "dataset": f"dev-{d}",
                        "dataset_digest": digest,
                        "metric": metric,
                        "value": value,
                        "ci_low": value - 0.03,
                        "ci_high": value + 0.03,
                        "n": 500,
                    }
                )
    return out[:n] if n >= 6 else out


@contextmanager
def http_registry(url: str, blob_dir: Path):
    import uvicorn

    from loraroute.registry import open_registry
    from loraroute.registry.auth import create_token
    from loraroute.registry.remote import RemoteRegistry
    from loraroute.registry.server import create_app

    store = open_registry(url, blob_dir=blob_dir)
    admin = create_token(store, "admin")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = RemoteRegistry(f"http://127.0.0.1:{port}", token=admin)
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(10)
        store.close()


def run_backend(reg: Any, work: Path, n_results: int, reps: int) -> dict:
    from loraroute.registry import QualityGateError
    from loraroute.registry.testing import write_lora_folder

    for seed in (1, 2, 3, 4):
        folder = write_lora_folder(work / f"v{seed}", seed=seed)
        reg.push(folder, "legal", base_model_id="tiny", base_fingerprint=DIGEST)
    reg.record_eval("legal@1", results_for(1, n_results), source="bench_gate")
    reg.record_eval("legal@2", results_for(2, n_results, regress=True), source="bench_gate")
    reg.record_eval("legal@3", results_for(3, n_results, improve=True), source="bench_gate")
    reg.record_eval("legal@4", results_for(4, n_results, improve=True), source="bench_gate")
    reg.alias_set("legal", "prod", 1)
    out: dict[str, Any] = {}
    try:
        reg.alias_set("legal", "prod", 2)
        out["refused"], out["refusal"] = False, ""
    except QualityGateError as e:
        out["refused"], out["refusal"] = True, str(e)
    out["prod_after_refusal"] = reg.resolve("legal:prod").ref
    out["improved_verdict"] = reg.gate_check("legal", 3).verdict
    out["accepted"] = reg.alias_set("legal", "prod", 3).ref == "legal@3"
    reg.alias_set("legal", "prod", 2, force=True)
    last = reg.promotions("legal")[-1]
    out["force_recorded"] = last["forced"] and last["to"] == "legal@2"
    reg.alias_set("legal", "prod", 3, force=True)

    def median_ms(fn) -> float:
        times = []
        for i in range(reps):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
        return round(statistics.median(times) * 1000, 2)

    out["results_per_version"] = len(reg.evals("legal@1"))
    out["gated_promotion_ms"] = median_ms(lambda i: reg.alias_set("legal", "prod", 3 + i % 2))
    out["ungated_alias_ms"] = median_ms(lambda i: reg.alias_set("legal", "staging", 3 + i % 2))
    out["gate_check_ms"] = median_ms(lambda i: reg.gate_check("legal", 4 - i % 2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=120, help="eval results per version")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.pop("LORAROUTE_REGISTRY", None)
    from loraroute.registry import open_registry
    from loraroute.registry.testing import PostgresUnavailable, temporary_postgres

    backends: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lr-gate-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.environ["LORAROUTE_HOME"] = str(work / "home")
        urls = {"sqlite": f"sqlite:///{work / 'sqlite' / 'registry.db'}"}
        try:
            urls["postgresql"] = stack.enter_context(temporary_postgres())
        except PostgresUnavailable as e:
            print(f"PostgreSQL skipped: {e}", file=sys.stderr)
        for name, url in urls.items():
            reg = open_registry(url, blob_dir=work / name / "blobs")
            backends[name] = run_backend(reg, work / f"{name}-src", args.results, args.reps)
            reg.close()
            print(name, json.dumps(backends[name]), flush=True)
        url = f"sqlite:///{work / 'http' / 'registry.db'}"
        with http_registry(url, work / "http" / "blobs") as client:
            backends["http"] = run_backend(client, work / "http-src", args.results, args.reps)
        print("http", json.dumps(backends["http"]), flush=True)
    goals = {}
    for name, b in backends.items():
        goals[f"refuses_regression_{name}"] = {
            "met": b["refused"] and b["prod_after_refusal"] == "legal@1",
            "detail": b["refusal"][:300],
        }
        goals[f"accepts_improvement_{name}"] = {
            "met": b["accepted"] and b["improved_verdict"] == "improved",
            "detail": f"verdict {b['improved_verdict']}",
        }
        goals[f"force_recorded_{name}"] = {"met": b["force_recorded"], "detail": "promotions()"}
    result = {
        "command": "python benchmarks/bench_gate.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "backends": backends,
        "goals": goals,
    }
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Quality gate",
        "",
        f"`{result['command']}` on {result['machine']}, load average {result['loadavg']} "
        "(a shared machine). legal@1 holds prod; legal@2 is a planted regression (accuracy "
        "0.05 lower on one dataset), legal@3 improves every metric. Times are medians of "
        f"{args.reps} calls with {backends['sqlite']['results_per_version']} eval results a "
        "version; HTTP is a loopback server over SQLite, driven by the real client.",
        "",
        "| backend | regression refused | improvement accepted | force recorded | gated promotion | "
        "ungated alias move | gate_check |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in backends.items():
        lines.append(
            f"| {name} | {'yes' if goals[f'refuses_regression_{name}']['met'] else 'NO'} | "
            f"{'yes' if goals[f'accepts_improvement_{name}']['met'] else 'NO'} | "
            f"{'yes' if b['force_recorded'] else 'NO'} | {b['gated_promotion_ms']} ms | "
            f"{b['ungated_alias_ms']} ms | {b['gate_check_ms']} ms |"
        )
    lines += [
        "",
        "Reading: the gated move reads both versions' results and records the promotion in the",
        "transaction that moves the alias; the difference to an ungated move is the gate's cost.",
        "",
        "The refusal, as the SQLite registry words it:",
        "",
        "```text",
    ]
    lines += [backends["sqlite"]["refusal"], "```", ""]
    (RESULTS / "gate.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
