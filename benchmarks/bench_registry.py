"""Registry throughput against plain ``cp``, local and over HTTP; ``ls`` with 10,000 versions.

Usage::

    .venv/bin/python benchmarks/bench_registry.py            # all sizes (1, 16, 256 MB)
    .venv/bin/python benchmarks/bench_registry.py --sizes 1 16 --versions 2000

Synthetic LoRA adapters (safetensors, float32 A/B pairs of rank 16 on a 2048-wide model) are
written to a temporary folder; nothing is downloaded. The peer is ``cp -r`` of the same
folder (the limit for a copy that does no hashing). Writes benchmarks/results/registry.json and
registry.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from loraroute.registry import open_registry
from loraroute.registry.auth import create_token
from loraroute.registry.remote import RemoteRegistry

RESULTS = Path(__file__).resolve().parent / "results"
RANK, WIDTH = 16, 2048
MODULE_BYTES = 2 * RANK * WIDTH * 4  # one A and one B, float32
FP = "sha256:" + "0" * 64


def make_adapter(folder: Path, megabytes: int, seed: int = 0) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    n_modules = max(1, megabytes * (1 << 20) // MODULE_BYTES)
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(n_modules):
        layer, proj = divmod(i, 2)
        key = f"base_model.model.model.layers.{layer}.self_attn.{'qv'[proj]}_proj"
        tensors[f"{key}.lora_A.weight"] = rng.random((RANK, WIDTH), dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.random((WIDTH, RANK), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": RANK,
                "lora_alpha": 32,
                "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": "synthetic-base",
                "task_type": "CAUSAL_LM",
            }
        )
    )
    (folder / "README.md").write_text(f"# synthetic {megabytes} MB adapter\n")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best(fn, reps: int) -> float:
    return min(fn() for _ in range(reps))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraroute.cli",
            "registry",
            "serve",
            "--port",
            str(port),
            "--registry",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("registry server did not start")


def bench_size(work: Path, mb: int, reps: int) -> dict:
    src = make_adapter(work / f"src-{mb}", mb, seed=mb)
    nbytes = folder_bytes(src)
    row: dict = {"size_mb": mb, "bytes": nbytes}
    counter = iter(range(10**6))

    def cp() -> float:
        dst = work / f"cp-{next(counter)}"
        t = timed(lambda: subprocess.run(["cp", "-r", str(src), str(dst)], check=True))
        shutil.rmtree(dst)
        return t

    row["cp_s"] = best(cp, reps)

    def sha() -> float:  # the floor for any verified copy: one sha256 pass over the bytes
        from loraroute.registry.blobs import sha256_file

        return timed(lambda: [sha256_file(p) for p in sorted(src.iterdir())])

    row["sha256_s"] = best(sha, reps)

    # local: a fresh registry per push (a second push of the same bytes is a no-op)
    def local_push() -> float:
        url = f"sqlite:///{work / f'local-{next(counter)}' / 'registry.db'}"
        reg = open_registry(url)
        t = timed(lambda: reg.push(src, "bench", base_fingerprint=FP))
        reg.close()
        shutil.rmtree(Path(url[len("sqlite:///") :]).parent)
        return t

    row["local_push_s"] = best(local_push, reps)
    url = f"sqlite:///{work / f'local-{mb}' / 'registry.db'}"
    reg = open_registry(url)
    reg.push(src, "bench", base_fingerprint=FP)

    def local_pull() -> float:
        dst = work / f"pull-{next(counter)}"
        t = timed(lambda: reg.pull("bench", dst))
        shutil.rmtree(dst)
        return t

    row["local_pull_s"] = best(local_pull, reps)

    # HTTP: a server in its own process over a fresh store
    srv_url = f"sqlite:///{work / f'srv-{mb}' / 'registry.db'}"
    store = open_registry(srv_url)
    token = create_token(store, "admin")  # type: ignore[arg-type]
    proc, base = start_server(srv_url)
    try:
        client = RemoteRegistry(base, token=token)

        def http_push() -> float:
            t = timed(lambda: client.push(src, f"bench{next(counter)}", base_fingerprint=FP))
            return t

        row["http_push_s"] = http_push()  # first push uploads every blob
        row["http_push_dedup_s"] = http_push()  # same bytes, new name: only the manifest

        def http_pull() -> float:
            dst = work / f"hpull-{next(counter)}"
            t = timed(lambda: client.pull(client.list()[0].ref, dst))
            shutil.rmtree(dst)
            return t

        row["http_pull_s"] = best(http_pull, reps)
        client.close()
    finally:
        proc.kill()
        proc.wait()
    for key in ("cp", "sha256", "local_push", "local_pull", "http_push", "http_pull"):
        row[f"{key}_MBps"] = round(nbytes / 1e6 / row[f"{key}_s"], 1)
    row["local_pull_vs_cp"] = round(row["cp_s"] / row["local_pull_s"], 3)
    row["http_pull_vs_cp"] = round(row["cp_s"] / row["http_pull_s"], 3)
    row["local_pull_vs_sha256"] = round(row["sha256_s"] / row["local_pull_s"], 3)
    reg.close()
    shutil.rmtree(src)
    return row


def bench_ls(work: Path, n_versions: int) -> dict:
    """``list()`` over ``n_versions`` versions (100 per adapter name, every 10th aliased)."""
    from sqlmodel import Session

    from loraroute.registry.local import _public
    from loraroute.registry.tables import Adapter, Alias, Version

    reg = open_registry(f"sqlite:///{work / 'ls' / 'registry.db'}")
    files = [
        {"path": "adapter_config.json", "digest": FP, "size": 500},
        {"path": "adapter_model.safetensors", "digest": FP, "size": 1 << 20},
    ]
    t0 = time.perf_counter()
    per = 100
    with Session(reg._write) as s:  # type: ignore[union-attr]
        for a in range(max(1, n_versions // per)):
            adapter = Adapter(name=f"adapter-{a:04d}")
            s.add(adapter)
            s.flush()
            for n in range(1, per + 1):
                v = Version(
                    adapter_id=adapter.id,
                    number=n,
                    digest=f"sha256:{a:032x}{n:032x}",
                    peft_type="LORA",
                    rank=16,
                    alpha=32.0,
                    target_modules=["q_proj", "v_proj"],
                    dtype="F32",
                    size=1 << 20,
                    domain=f"d{a % 7}",
                    tags={"team": f"t{a % 5}"},
                    metrics={"eval_loss": 1.0},
                    routing_examples=["an example request"] * 5,
                    base_model_id="synthetic-base",
                    base_fingerprint=FP,
                    files_json=files,
                )
                v.doc = _public(adapter.name, v).to_doc()
                s.add(v)
                if n % 10 == 0:
                    s.flush()
                    s.add(Alias(adapter_id=adapter.id, name=f"a{n}", version_id=v.id))
        s.commit()
    fill_s = time.perf_counter() - t0
    reg.close()
    times, cpu = [], []
    for _ in range(5):
        fresh = open_registry(f"sqlite:///{work / 'ls' / 'registry.db'}")
        t0, c0 = time.perf_counter(), time.process_time()
        versions = fresh.list()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        fresh.close()
    assert len(versions) == n_versions
    filtered = open_registry(f"sqlite:///{work / 'ls' / 'registry.db'}")
    t0 = time.perf_counter()
    filtered.list(name="adapter-0042")
    name_s = time.perf_counter() - t0
    return {
        "versions": n_versions,
        "fill_s": round(fill_s, 2),
        "ls_median_ms": round(statistics.median(times) * 1000, 1),
        "ls_min_ms": round(min(times) * 1000, 1),
        # CPU time of this process: what the wall time would be on an idle machine
        "ls_cpu_median_ms": round(statistics.median(cpu) * 1000, 1),
        "ls_by_name_ms": round(name_s * 1000, 1),
    }


def write_results(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "registry.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Registry benchmark",
        "",
        f"`{result['command']}` on {result['machine']}; best of {result['reps']} runs, warm page "
        "cache. Throughput in MB/s; `cp` is `cp -r` of the same folder (no hashing), the limit.",
        "",
        "| size | cp | sha256 only | local push | local pull | pull/cp | pull/sha256 | HTTP push | HTTP push (dedup) | HTTP pull | HTTP pull/cp |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['size_mb']} MB | {r['cp_MBps']} | {r['sha256_MBps']} | {r['local_push_MBps']} | "
            f"{r['local_pull_MBps']} | {r['local_pull_vs_cp']:.0%} | "
            f"{r['local_pull_vs_sha256']:.0%} | {r['http_push_MBps']} | "
            f"{r['http_push_dedup_s'] * 1000:.0f} ms | {r['http_pull_MBps']} | "
            f"{r['http_pull_vs_cp']:.0%} |"
        )
    ls = result["ls"]
    lines += [
        "",
        f"`list()` of {ls['versions']:,} versions (100 per adapter, aliases on every 10th): "
        f"median {ls['ls_median_ms']} ms, best {ls['ls_min_ms']} ms (CPU time "
        f"{ls['ls_cpu_median_ms']} ms); one adapter's 100 "
        f"versions: {ls['ls_by_name_ms']} ms. Aim: pull >= 50% of cp, ls < 200 ms.",
        "",
        "Reading: a pull re-hashes every byte it writes, so its ceiling is one sha256 pass",
        "('sha256 only'), not `cp` (which may copy in the kernel and verifies nothing).",
        f"Load average while running: {result['loadavg']} on {os.cpu_count()} CPUs (a shared",
        "machine), so absolute figures are pessimistic.",
        "",
    ]
    (RESULTS / "registry.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="Print only; keep results files.")
    args = ap.parse_args()
    os.environ.pop("LORAROUTE_REGISTRY", None)
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as tmp:
        work = Path(tmp)
        os.environ["LORAROUTE_HOME"] = str(work / "home")
        throughput = []
        for mb in args.sizes:
            row = bench_size(work, mb, args.reps)
            print(json.dumps(row), flush=True)
            throughput.append(row)
        ls = bench_ls(work, args.versions)
        print(json.dumps(ls), flush=True)
    result = {
        "command": "python benchmarks/bench_registry.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "reps": args.reps,
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "throughput": throughput,
        "ls": ls,
    }
    if not args.no_write:
        write_results(result)


if __name__ == "__main__":
    main()
