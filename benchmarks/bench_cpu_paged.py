"""CPU benchmark: the paged path against the dense path on the embedded SmolLM2 (fp32).

The same work as bench_runtime.py's mixed batch (8 chat requests over 4 random rank-8 adapters
on q/k/v/o, 64 new tokens, greedy), through two engines of one process: ``kv_cache="dense"``
(each prompt prefilled alone, rows merged by left padding; the CPU default before the paged
path) and ``kv_cache="paged"`` (the default now). Runs alternate between them, so the load of
the shared machine hits both alike; besides wall-clock tokens/s, tokens per CPU-second of the
process is reported, which other jobs on the cores disturb much less. Both paths must produce
the same tokens.

Writes ``cpu_paged.json`` and ``cpu_paged.md``.

    .venv/bin/python benchmarks/bench_cpu_paged.py [--reps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_runtime import PROMPTS, make_adapters  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from loraroute.agents.runtime.engine import Engine
    from loraroute.models import resolve_base_model
    from loraroute.settings import get_settings

    settings = get_settings()
    base = resolve_base_model(settings=settings).path
    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-cpu-paged-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    folders = make_adapters(base, tmp, 4)
    names = [f"a{i}" for i in range(4)]
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    engines = {}
    for kv in ("dense", "paged"):
        eng = Engine(base, settings=settings, device="cpu", max_resident=16, kv_cache=kv)
        for n, f in zip(names, folders, strict=True):
            eng.load_adapter_folder(f, name=n, base_fingerprint=eng.base_fingerprint)
        eng.generate(chats[0], names[0], max_new_tokens=4)  # warm up
        engines[kv] = eng
    runs: dict[str, list[dict]] = {kv: [] for kv in engines}
    tokens: dict[str, list] = {}
    load = []
    for rep in range(args.reps):
        for kv, eng in engines.items():
            load.append(os.getloadavg()[0])
            cpu, wall = time.process_time(), time.perf_counter()
            hs = [
                eng.submit(c, names[i % 4], max_new_tokens=args.new_tokens)
                for i, c in enumerate(chats)
            ]
            gens = [h.result() for h in hs]
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            n = sum(g.completion_tokens for g in gens)
            tokens.setdefault(kv, [g.token_ids for g in gens])
            runs[kv].append({"tokens": n, "cpu_s": cpu, "wall_s": wall})
            print(f"{kv} {rep}: {n / cpu:.1f} tok per CPU-s, {n / wall:.1f} tok/s", flush=True)
    for eng in engines.values():
        eng.close()
    out: dict = {
        "command": "python benchmarks/bench_cpu_paged.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_1min": {"min": min(load), "max": max(load)},
        "same_tokens": tokens["dense"] == tokens["paged"],
    }
    for kv, rs in runs.items():
        out[kv] = {
            "tok_per_cpu_s": statistics.median(r["tokens"] / r["cpu_s"] for r in rs),
            "wall_tok_s": statistics.median(r["tokens"] / r["wall_s"] for r in rs),
            "runs": rs,
        }
    cpu_x = out["paged"]["tok_per_cpu_s"] / out["dense"]["tok_per_cpu_s"]
    wall_x = out["paged"]["wall_tok_s"] / out["dense"]["wall_tok_s"]
    out["goals"] = {
        "paged not slower than dense on CPU": {
            "met": cpu_x >= 1.0 and out["same_tokens"],
            "detail": f"{cpu_x:.2f}x the dense path's tokens per CPU-second, {wall_x:.2f}x its "
            f"wall tokens/s (medians of {args.reps} alternating runs each); same tokens: "
            f"{out['same_tokens']}",
        }
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_paged.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Paged against dense KV cache on CPU (SmolLM2-135M, fp32)",
        "",
        f"Command: `{out['command']}`; torch {out['torch']}, {args.threads} intra-op thread(s) "
        f"on the shared 2-core box, load average (1 min) {min(load):.1f}-{max(load):.1f} during "
        f"the runs. 8 requests over 4 adapters, {args.new_tokens} new tokens, greedy; runs of "
        "the two paths alternate.",
        "",
        "| path | tokens per CPU-second | wall tokens/s |",
        "| --- | --- | --- |",
        *(
            f"| {kv} | {out[kv]['tok_per_cpu_s']:.1f} | {out[kv]['wall_tok_s']:.1f} |"
            for kv in ("dense", "paged")
        ),
        "",
        "## Goals",
        "",
        *(
            f"- {g}: **{'met' if v['met'] else 'not met'}** ({v['detail']})"
            for g, v in out["goals"].items()
        ),
        "",
    ]
    (args.out / "cpu_paged.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
