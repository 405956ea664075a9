"""Runtime benchmark: our slot-LoRA engine vs. PEFT on SmolLM2-135M (CPU, fp32), in one run.

Measures
1. warm switch between resident adapters: ours (ref -> slot lookup + setting the row index) vs.
   ``PeftModel.set_adapter``;
2. cold load of an adapter: ours (read + check + copy into a slot) vs. ``PeftModel.load_adapter``
   vs. a bare ``safetensors.torch.load_file``;
3. a mixed batch of 8 requests over 4 adapters, 64 new tokens, greedy: tokens/s for our
   continuous batcher, PEFT ``generate(adapter_names=...)``, PEFT switching per request, and the
   base model alone (transformers ``generate``, batched);
4. a memory-budget cycle through 100 adapters with a pool of 8 slots / a byte budget.

Adapters are random rank-8 LoRAs on q/k/v/o built with peft. Writes
benchmarks/results/runtime.json and runtime.md.

    .venv/bin/python benchmarks/bench_runtime.py [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = [
    "What does a limitation of liability clause do?",
    "Solve for x: 3x - 5 = 10.",
    "Write a Python function that reverses a string.",
    "What should I do for a mild headache?",
    "Summarise the water cycle in two sentences.",
    "Is a verbal contract binding?",
    "What is the derivative of x squared?",
    "How do I read a CSV file in Python?",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timeit(fn, n: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {
        "median_us": statistics.median(times) * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "p90_us": sorted(times)[int(0.9 * (len(times) - 1))] * 1e6,
        "n": n,
    }


def make_adapters(base_path: Path, root: Path, count: int) -> list[Path]:
    """``count`` random rank-8 LoRA folders; the first is built with peft, the rest re-randomised."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_path))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    first = root / "adapter-000"
    peft_model.save_pretrained(first)
    template = load_file(str(first / "adapter_model.safetensors"))
    config = (first / "adapter_config.json").read_text()
    folders = []
    for i in range(count):
        gen = torch.Generator().manual_seed(1000 + i)
        folder = root / f"adapter-{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: (torch.randn(v.shape, generator=gen) * (0.02 if "lora_A" in k else 0.01))
            for k, v in template.items()
        }
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(config)
        folders.append(folder)
    del peft_model, model
    return folders


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_switch(engine, peft_model, names: list[str], n: int) -> dict:
    ctx = engine.slots.context
    i = iter(range(10**9))

    def ours():
        entry = engine._resolve(names[next(i) % len(names)])
        ctx.set([entry.slot])

    def ours_index_only():
        ctx.set([1 + next(i) % len(names)])

    def peft():
        peft_model.set_adapter(names[next(i) % len(names)])

    out = {
        "ours": timeit(ours, n),
        "ours_index_only": timeit(ours_index_only, n),
        "peft_set_adapter": timeit(peft, max(20, n // 20)),
    }
    ctx.set([0])
    return out


def push_adapters(registry, folders: list[Path], base_fingerprint: str) -> list[str]:
    """Push ``folders`` as adapters ``cold-000``...; check each out once, so that a cold load
    reads a verified checkout whose file is in the page cache (the issue's setting)."""
    refs = []
    for i, folder in enumerate(folders):
        version = registry.push(folder, f"cold-{i:03d}", base_fingerprint=base_fingerprint)
        registry.local_path(version.ref)
        refs.append(version.ref)
    return refs


def bench_cold_load(engine, peft_model, refs: list[str], n: int) -> dict:
    """Per adapter, interleaved: the bare read of its file, our registry-ref load, our load of
    the same folder (which hashes the files: a plain folder has no recorded digest), and
    PEFT's ``load_adapter``. Each of ours starts with the adapter in neither tier."""
    from safetensors.torch import load_file

    registry = engine.registry
    times: dict[str, list[float]] = {k: [] for k in ("bare", "ref", "lookup", "folder", "peft")}
    for k in range(n):
        ref = refs[k % len(refs)]
        folder = Path(registry.local_path(ref))
        t = time.perf_counter()
        load_file(str(folder / "adapter_model.safetensors"))
        times["bare"].append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.load_adapter(ref)
        times["ref"].append(time.perf_counter() - t)
        engine.evict(ref)
        # the registry's share of a ref load: what Engine._resolve asks it
        t = time.perf_counter()
        registry.local_path(registry.resolve(ref).ref)
        times["lookup"].append(time.perf_counter() - t)
        name = f"folder-{k}"
        t = time.perf_counter()
        engine.load_adapter_folder(folder, name=name, base_fingerprint=engine.base_fingerprint)
        times["folder"].append(time.perf_counter() - t)
        engine.evict(name)
        t = time.perf_counter()
        peft_model.load_adapter(str(folder), adapter_name=name)
        times["peft"].append(time.perf_counter() - t)
        peft_model.delete_adapter(name)

    def ms(xs: list[float]) -> dict:
        return {"median_ms": statistics.median(xs) * 1e3, "mean_ms": statistics.fmean(xs) * 1e3}

    out = {
        "ours_registry_ref": ms(times["ref"]),
        "registry_resolve_and_local_path": ms(times["lookup"]),
        "ours_folder": ms(times["folder"]),
        "peft_load_adapter": ms(times["peft"]),
        "bare_load_file": ms(times["bare"]),
        "n": n,
    }
    bare = out["bare_load_file"]["median_ms"]
    out["ratio_ref_to_bare"] = out["ours_registry_ref"]["median_ms"] / bare
    out["ratio_folder_to_bare"] = out["ours_folder"]["median_ms"] / bare
    return out


def _count_new(ids: torch.Tensor, eos: set[int]) -> int:
    n = 0
    for t in ids.tolist():
        if t in eos:
            break
        n += 1
    return n


def bench_mixed(engine, peft_model, base_model, tok, names: list[str], new_tokens: int) -> dict:
    eos = engine.scheduler.eos_ids
    reqs = [(PROMPTS[i], names[i % len(names)]) for i in range(8)]
    chats = [[{"role": "user", "content": p}] for p, _ in reqs]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    out: dict = {}

    # ours: all 8 submitted together, decoded in one continuous batch
    engine.generate(chats[0], names[0], max_new_tokens=4)  # warm up
    t = time.perf_counter()
    handles = [
        engine.submit(c, n, max_new_tokens=new_tokens)
        for c, (_, n) in zip(chats, reqs, strict=True)
    ]
    gens = [h.result() for h in handles]
    wall = time.perf_counter() - t
    toks = sum(g.completion_tokens for g in gens)
    out["ours_continuous_batch"] = {"tokens": toks, "seconds": wall, "tokens_per_s": toks / wall}

    # ours, base model for every row (the cost of the adapters themselves)
    t = time.perf_counter()
    gens = [h.result() for h in [engine.submit(c, None, max_new_tokens=new_tokens) for c in chats]]
    wall = time.perf_counter() - t
    toks = sum(g.completion_tokens for g in gens)
    out["ours_base_only"] = {"tokens": toks, "seconds": wall, "tokens_per_s": toks / wall}

    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen_kw = dict(
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=sorted(eos),
    )

    # PEFT: one batched generate with a per-row adapter_names list
    with torch.inference_mode():
        t = time.perf_counter()
        res = peft_model.generate(**enc, adapter_names=[n for _, n in reqs], **gen_kw)
        wall = time.perf_counter() - t
    toks = sum(_count_new(r[enc["input_ids"].shape[1] :], eos) for r in res)
    out["peft_generate_adapter_names"] = {
        "tokens": toks,
        "seconds": wall,
        "tokens_per_s": toks / wall,
    }

    # PEFT: switch adapter per request, one request at a time
    with torch.inference_mode():
        t = time.perf_counter()
        toks = 0
        for text, (_, name) in zip(texts, reqs, strict=True):
            peft_model.set_adapter(name)
            one = tok([text], return_tensors="pt", add_special_tokens=False)
            r = peft_model.generate(**one, **gen_kw)
            toks += _count_new(r[0, one["input_ids"].shape[1] :], eos)
        wall = time.perf_counter() - t
    out["peft_switch_per_request"] = {"tokens": toks, "seconds": wall, "tokens_per_s": toks / wall}

    # base model alone, batched transformers generate (no adapters at all)
    with torch.inference_mode():
        t = time.perf_counter()
        res = base_model.generate(**enc, **gen_kw)
        wall = time.perf_counter() - t
    toks = sum(_count_new(r[enc["input_ids"].shape[1] :], eos) for r in res)
    out["transformers_base_batched"] = {
        "tokens": toks,
        "seconds": wall,
        "tokens_per_s": toks / wall,
    }
    return out


def bench_budget_cycle(base_path: Path, folders: list[Path], settings) -> dict:
    from loraroute.agents.runtime.engine import Engine

    with Engine(base_path, settings=settings, device="cpu", max_resident=8) as probe_engine:
        probe = probe_engine.load_adapter_folder(
            folders[0], name="probe", base_fingerprint=probe_engine.base_fingerprint
        )
        one = probe.nbytes
    budget = 4 * one  # bytes allow only 4 resident even though 8 slots exist
    rss0 = rss_mb()
    with Engine(
        base_path, settings=settings, device="cpu", max_resident=8, max_bytes=budget
    ) as engine:
        # the first forward pages in the memory-mapped weights; measure growth after it
        engine.generate("hi", max_new_tokens=1)
        rss_loaded = rss_mb()
        peak_pool = 0
        t = time.perf_counter()
        for i, folder in enumerate(folders):
            engine.load_adapter_folder(
                folder, name=f"a{i}", base_fingerprint=engine.base_fingerprint
            )
            engine.generate("hi", adapter=f"a{i}", max_new_tokens=1)
            peak_pool = max(peak_pool, engine.pool.used_bytes)
        wall = time.perf_counter() - t
        return {
            "adapters": len(folders),
            "adapter_bytes": one,
            "max_bytes": budget,
            "max_resident": 8,
            "peak_pool_bytes": peak_pool,
            "within_budget": peak_pool <= budget,
            "resident_at_end": len(engine.pool),
            "evictions": engine.pool.evictions,
            "seconds": wall,
            "loads_per_s": len(folders) / wall,
            "slot_buffer_bytes": engine.slots.slot_bytes(),
            "rss_mb_engine_loaded": rss_loaded,
            "rss_mb_after_cycle": rss_mb(),
            "rss_growth_mb": rss_mb() - rss_loaded,
            "rss_mb_before": rss0,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and tokens")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice, one per core)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraroute.agents.runtime.engine import Engine
    from loraroute.models import resolve_base_model
    from loraroute.registry import open_registry
    from loraroute.settings import get_settings

    settings = get_settings()
    base_path = resolve_base_model(settings=settings).path
    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-runtime-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # ~0.5 GB of adapters and blobs
    log("building adapters")
    folders = make_adapters(base_path, tmp, 100)
    names = ["a0", "a1", "a2", "a3"]

    log("loading our engine and the PEFT peer")
    registry = open_registry(
        f"sqlite:///{tmp / 'registry.db'}", settings=settings, blob_dir=tmp / "blobs"
    )
    engine = Engine(base_path, settings=settings, registry=registry, device="cpu", max_resident=16)
    cold_refs = push_adapters(registry, folders[4:24], engine.base_fingerprint)
    for name, folder in zip(names, folders, strict=False):
        engine.load_adapter_folder(folder, name=name, base_fingerprint=engine.base_fingerprint)
    tok = AutoTokenizer.from_pretrained(str(base_path))
    base_model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32).eval()
    peft_base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(peft_base, str(folders[0]), adapter_name=names[0]).eval()
    for name, folder in zip(names[1:], folders[1:4], strict=True):
        peft_model.load_adapter(str(folder), adapter_name=name)

    results: dict = {
        "model": "smollm2-135m-instruct",
        "device": "cpu",
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "adapters": "random LoRA r=8 alpha=16 on q/k/v/o_proj (peft format)",
        "quick": args.quick,
        "threads_option": args.threads,
        # the machine is shared: the 1-minute load average before each part, and at the end
        "load_average": {"start": os.getloadavg()[0]},
    }
    load = results["load_average"]
    log("warm switch")
    results["warm_switch"] = bench_switch(engine, peft_model, names, 200 if args.quick else 2000)
    log("cold load")
    load["cold_load"] = os.getloadavg()[0]
    results["cold_load"] = bench_cold_load(engine, peft_model, cold_refs, 5 if args.quick else 20)
    log("mixed batch")
    load["mixed_batch"] = os.getloadavg()[0]
    new_tokens = 16 if args.quick else 64
    results["mixed_batch"] = {
        "requests": 8,
        "adapters": 4,
        "max_new_tokens": new_tokens,
        **bench_mixed(engine, peft_model, base_model, tok, names, new_tokens),
    }
    engine.close()
    del peft_model, peft_base, base_model
    log("memory budget cycle")
    load["budget_cycle"] = os.getloadavg()[0]
    results["budget_cycle"] = bench_budget_cycle(base_path, folders, settings)
    results["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load["end"] = os.getloadavg()[0]
    write(results)


def write(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(r, indent=2) + "\n")
    sw, cl, mb, bc = r["warm_switch"], r["cold_load"], r["mixed_batch"], r["budget_cycle"]
    la = r["load_average"]
    opts = (" --quick" if r["quick"] else "") + (
        f" --threads {r['torch_threads']}" if r.get("threads_option") else ""
    )
    base, ours = mb["ours_base_only"]["tokens_per_s"], mb["ours_continuous_batch"]["tokens_per_s"]
    switch = mb["peft_switch_per_request"]["tokens_per_s"]
    limit = mb["transformers_base_batched"]["tokens_per_s"]
    engine_only = (
        cl["ours_registry_ref"]["median_ms"] - cl["registry_resolve_and_local_path"]["median_ms"]
    )
    lines = [
        "# Runtime benchmark (SmolLM2-135M, CPU, fp32)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_runtime.py{opts}`; "
        f"torch {r['torch']}, {r['torch_threads']} intra-op thread(s) on {r['cpu_count']} cores "
        f"(shared machine). Adapters: {r['adapters']}."
        + (
            " `--threads` applies to every row of the run, ours and the peers alike: with other "
            "jobs on the cores, a second OpenMP thread mostly waits for a core."
            if r.get("threads_option")
            else ""
        ),
        "",
        "Load average (1 min) of the shared machine: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in la.items())
        + ". Other jobs on the same cores slow every row; compare rows of one run.",
        "",
        "## Warm switch between resident adapters",
        "",
        "| | median | p90 |",
        "|---|---|---|",
        f"| ours: ref -> slot + set row index | {sw['ours']['median_us']:.1f} µs | {sw['ours']['p90_us']:.1f} µs |",
        f"| ours: set row index only | {sw['ours_index_only']['median_us']:.1f} µs | {sw['ours_index_only']['p90_us']:.1f} µs |",
        f"| PEFT `set_adapter` | {sw['peft_set_adapter']['median_us']:.1f} µs | {sw['peft_set_adapter']['p90_us']:.1f} µs |",
        "",
        "## Cold load of one adapter until usable (registry checkout in the page cache)",
        "",
        "| | median | x bare read |",
        "|---|---|---|",
        f"| ours: `load_adapter(ref)` from the local registry | "
        f"{cl['ours_registry_ref']['median_ms']:.2f} ms | {cl['ratio_ref_to_bare']:.2f} |",
        f"| (of which the registry's `resolve` + `local_path`) | "
        f"{cl['registry_resolve_and_local_path']['median_ms']:.2f} ms | |",
        f"| ours: `load_adapter_folder` (hashes the files: no recorded digest) | "
        f"{cl['ours_folder']['median_ms']:.2f} ms | {cl['ratio_folder_to_bare']:.2f} |",
        f"| PEFT `load_adapter` | {cl['peft_load_adapter']['median_ms']:.2f} ms | |",
        f"| bare `safetensors.torch.load_file` | {cl['bare_load_file']['median_ms']:.2f} ms | 1.00 |",
        "",
        f"Goal <= 2x the bare read: {'met' if cl['ratio_ref_to_bare'] <= 2 else 'missed'} "
        f"({cl['ratio_ref_to_bare']:.2f}x for a registry ref; "
        f"{engine_only / cl['bare_load_file']['median_ms']:.2f}x without the registry's lookups). "
        "A registry ref is read with the digest the registry verified when it wrote the "
        "checkout; a plain folder is hashed (sha256) from the bytes that are parsed.",
        "",
        f"## Mixed batch: {mb['requests']} requests over {mb['adapters']} adapters, "
        f"{mb['max_new_tokens']} new tokens, greedy",
        "",
        "| | tokens | seconds | tokens/s |",
        "|---|---|---|---|",
    ]
    for key, label in [
        ("ours_continuous_batch", "ours: continuous batch, per-row adapters"),
        ("ours_base_only", "ours: same batch, base model only"),
        ("peft_generate_adapter_names", "PEFT `generate(adapter_names=...)`"),
        ("peft_switch_per_request", "PEFT `set_adapter` + `generate` per request"),
        ("transformers_base_batched", "transformers `generate`, base only, batched"),
    ]:
        m = mb[key]
        lines.append(f"| {label} | {m['tokens']} | {m['seconds']:.2f} | {m['tokens_per_s']:.1f} |")
    lines += [
        "",
        f"Goals: >= 0.9x our base-only batch: {ours / base:.2f}x "
        f"({'met' if ours >= 0.9 * base else 'missed'}); >= 4x PEFT switching per request: "
        f"{ours / switch:.2f}x ({'met' if ours >= 4 * switch else 'missed'}). For scale, the base "
        f"model alone batched (transformers `generate`) is {limit / switch:.2f}x PEFT switching per "
        "request on this machine: batching 8 rows of a 135M model on 2 CPU cores buys less than "
        "4x, for any adapter method.",
        "",
        f"## Memory budget: cycling through {bc['adapters']} adapters",
        "",
        f"Pool of {bc['max_resident']} slots and max_bytes = {bc['max_bytes']} "
        f"({bc['max_bytes'] // bc['adapter_bytes']} adapters of {bc['adapter_bytes']} bytes). Each "
        f"adapter is loaded and answers one token: {bc['loads_per_s']:.1f} loads/s, "
        f"{bc['evictions']} evictions, peak pool bytes {bc['peak_pool_bytes']} "
        f"(within budget: {bc['within_budget']}), RSS growth over the cycle "
        f"{bc['rss_growth_mb']:.1f} MB; preallocated slot buffers {bc['slot_buffer_bytes'] / 2**20:.1f} MiB. "
        "The growth counts the slot buffers and, on CPU, the q/k/v weights copied into one tensor "
        "at the first adapter load (about 50 MB here; their memory-mapped originals stay mapped "
        "as clean page cache).",
        "",
    ]
    (RESULTS / "runtime.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
