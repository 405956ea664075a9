"""GPU serving benchmark: our engine under real traffic on a Llama-3-8B-shaped model (one H200).

Model and adapters as in bench_gpu.py (random bf16 weights with Llama-3-8B's shapes; rank-16
LoRA on q, k, v, o, gate, up and down). Everything is measured in one run, on one model:

1. floors of a decode step at 32 rows (gpu_peers.floors): its GEMMs alone as one CUDA graph,
   and its weight bytes at the bandwidth of a plain reduction;
2. transformers' ``generate`` with a static cache (compiled by transformers on CUDA) on the
   fixed batch (32 prompts of 128 tokens -> 128 new tokens) and on the first serving prompts;
3. our engine on the fixed batch: base alone (before any adapter is registered), then with
   1, 8 and 32 distinct adapters, and 32 with int8 adapter weights, each run beside a base
   run of the same engine;
4. serving, in the shape of vLLM's benchmark_serving: prompts of 32-2,048 tokens and outputs
   of 16-512 tokens (log-uniform, seeded), adapters with Zipf popularity; saturation (every
   request at once) and Poisson arrivals at 50/80/100% of it with 64 adapters, 80% with the
   base alone and with 1, 8 and 1,000 adapters (1,000 registered, cycling through the device
   slots from the pinned CPU tier); TTFT, time per output token, throughput, KV blocks; the
   TTFT of each of 16 of the prompts alone on the idle engine;
5. memory: 256 sequences of 2,048 tokens of context at once (1,024 prompt + 1,024 new), 64
   adapters resident.

Writes ``gpu_serving.json`` and ``gpu_serving.md`` (with a ``goals`` map) into ``--out``.

    python benchmarks/bench_gpu_serving.py [--smoke] [--out DIR]

``--check`` runs every section but the floors on the CPU with a 2-layer, 64-wide model of the
same vocabulary (fp32, PyTorch LoRA): a check of the harness on a machine without a GPU, no
figure of interest.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import (  # noqa: E402
    LLAMA3_8B,
    RANK,
    RESULTS,
    build_model,
    env,
    log,
    prompts,
    renamed,
    summarize,
    template_weights,
    tokenizer,
)
from gpu_peers import drop_compiled, floors, hf_static_generate, sync  # noqa: E402
from gpu_serving_workload import Request, idle_ttft, serve, workload  # noqa: E402

CHECK_MODEL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2,
)  # fmt: skip


def run_engine(engine, adapters: list[str | None], ids: list[list[int]], new_tokens: int) -> dict:
    """One batch through ``engine`` (bench_gpu's ``run_engine``, on any device): decode tok/s
    over the steps in which every row decodes, end to end over the whole batch."""
    from loraroute.agents.runtime.requests import SamplingParams

    sched = engine.scheduler
    sched.decode_tokens, sched.decode_seconds, steps0 = 0, 0.0, sched.steps
    params = SamplingParams(max_new_tokens=new_tokens)
    sync()
    t = time.perf_counter()
    handles = [engine._submit_ids(p, a, params) for p, a in zip(ids, adapters, strict=True)]
    gens = [h.result() for h in handles]
    wall = time.perf_counter() - t
    produced = sum(g.completion_tokens for g in gens)
    return {
        "decode_tok_s": sched.decode_tokens / max(sched.decode_seconds, 1e-9),
        "e2e_tok_s": produced / wall,
        "decode_steps": sched.steps - steps0,
        "decode_tokens": sched.decode_tokens,
        "decode_seconds": sched.decode_seconds,
        "wall_seconds": wall,
        "tokens": produced,
    }


def packed(engine, tmpl, seed: int):
    """A packed host buffer in the engine's layout with distinct random values (pinned on
    CUDA; bench_gpu's ``random_packed`` on any device)."""
    from loraroute.agents.lora import PackedAdapter

    layout = engine.slots.layout
    cuda = engine.device.type == "cuda"
    flat = torch.empty(layout.numel, dtype=engine.slots.dtype, pin_memory=cuda)
    gen = torch.Generator().manual_seed(seed)
    flat.copy_((torch.randn(layout.numel, generator=gen) * 0.02).to(flat.dtype))
    return PackedAdapter(flat=flat, layout=layout, ranks={n: tmpl.rank for n in tmpl.modules})


DEVICE = "cuda"


def fuse(model) -> None:
    """q/k/v and gate/up weights as rows of one tensor each, as the engine runs them (done
    first, so the floors and transformers read the same weights)."""
    from loraroute.agents.lora.fuse import fuse_rows

    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        fuse_rows([a.q_proj, a.k_proj, a.v_proj])
        fuse_rows([m.gate_proj, m.up_proj])


def lengths(args) -> dict:
    return {"prompt": (32, args.max_prompt), "output": (16, args.max_output)}


def left_padded(reqs: list[Request], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(reqs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(reqs):
        ids[i, length - len(r.prompt) :] = torch.tensor(r.prompt)
        mask[i, length - len(r.prompt) :] = 1
    return ids.to(DEVICE), mask.to(DEVICE)


def bench_hf(model, args, serving: list[Request]) -> dict:
    out: dict[str, Any] = {}
    ids = torch.tensor(prompts(args.rows, args.prompt_len), device=DEVICE)
    log("transformers generate, static cache, compiled: the fixed batch")
    out["fixed"] = hf_static_generate(model, [ids], args.new_tokens)
    log(f"  {json.dumps(out['fixed'])}")
    if serving:
        # one shape for every batch (one compilation): prompts left-padded to the longest,
        # every row generating the most new tokens any asked for; only asked tokens count
        length = max(len(r.prompt) for r in serving)
        new = max(r.new_tokens for r in serving)
        batches = [serving[i : i + args.rows] for i in range(0, len(serving), args.rows)]
        padded = [left_padded(b, length) for b in batches]
        log(f"transformers on {len(serving)} serving prompts ({len(batches)} batches)")
        t = time.perf_counter()
        hf_gen(model, *padded[0], new)  # compiles for this shape
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for ids_b, mask_b in padded:
            hf_gen(model, ids_b, mask_b, new)
        wall = time.perf_counter() - t
        asked = sum(r.new_tokens for r in serving)
        out["serving"] = {
            "requests": len(serving),
            "padded_prompt": length,
            "new_tokens": new,
            "warmup_seconds": warm,
            "seconds": wall,
            "asked_tok_s": asked / wall,
            "generated_tok_s": len(serving) * new / wall,
        }
        log(f"  {json.dumps(out['serving'])}")
    drop_compiled(model)
    return out


def hf_gen(model, ids, mask, new: int) -> None:
    sync()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                   do_sample=False, pad_token_id=0, cache_implementation="static")  # fmt: skip
    sync()


def make_engine(model, args):
    from loraroute.agents.runtime.engine import Engine

    engine = Engine.from_model(
        model,
        tokenizer(),
        name="llama3-8b-shaped-random",
        max_batch_size=args.max_rows,
        max_resident=args.resident,
        max_cpu_adapters=args.registered + 8,
        lora_backend="triton" if DEVICE == "cuda" else "torch",
        kv_cache_tokens=args.kv_tokens,
    )
    engine.scheduler.eos_ids = set()  # random weights: every request runs to its budget
    return engine


def bench_fixed_base(engine, args) -> dict:
    ids = prompts(args.rows, args.prompt_len)
    n = len(ids)
    log("ours, base alone (no adapter registered yet): the fixed batch")
    for _ in range(2):
        run_engine(engine, [None] * n, ids, args.new_tokens)
    runs = [run_engine(engine, [None] * n, ids, args.new_tokens) for _ in range(args.reps)]
    out = summarize(runs)
    log(f"  decode {out['decode_tok_s']:.0f} tok/s, e2e {out['e2e_tok_s']:.0f} tok/s {out['reps']}")
    return out


def register(engine, args) -> None:
    log(f"registering {args.registered} adapters")
    tmpl = template_weights(engine.model, RANK, seed=1)
    engine.add_adapter(renamed(tmpl, 0), name="warm", load=False)  # wraps the modules
    packs = [packed(engine, tmpl, seed=i) for i in range(min(args.host_buffers, args.registered))]
    for i in range(args.registered):
        engine.add_adapter(
            renamed(tmpl, i + 1), name=f"a{i}", load=False, packed=packs[i % len(packs)]
        )


def set_adapter_weights(engine, kind: str) -> None:
    """The engine's slots in ``kind`` (``"model"`` or ``"int8"``), the resident adapters
    converted; the decode graphs are recorded again."""
    with engine._model_lock:
        engine.slots.adapter_weights = kind


def bench_fixed_adapters(engine, args) -> dict:
    """1, 8 and 32 distinct adapters, then 32 with int8 adapter weights, each run beside a
    base run of the same engine."""
    ids = prompts(args.rows, args.prompt_len)
    n = len(ids)
    out: dict[str, Any] = {}
    base_runs = []
    cases = [(1, "model"), (8, "model"), (32, "model")]
    if engine.slots.backend == "triton":  # int8 slots are read by the Triton kernels only
        cases.append((32, "int8"))
    for distinct, weights in cases:
        set_adapter_weights(engine, weights)
        names = [f"a{i % distinct}" for i in range(n)]
        engine.preload(sorted(set(names)))
        for _ in range(2):
            run_engine(engine, names, ids, args.new_tokens)
        ours, base = [], []
        for _ in range(args.reps):
            base.append(run_engine(engine, [None] * n, ids, args.new_tokens))
            ours.append(run_engine(engine, names, ids, args.new_tokens))
        r = summarize(ours)
        r["paired_base"] = summarize(base)["reps"]
        r["paired_ratio"] = sum(
            o["decode_tok_s"] / b["decode_tok_s"] for o, b in zip(ours, base, strict=True)
        ) / len(ours)
        key = f"adapters_{distinct}" + ("_int8" if weights == "int8" else "")
        out[key] = r
        base_runs += base
        log(
            f"{key}: decode {r['decode_tok_s']:.0f}, e2e {r['e2e_tok_s']:.0f} (paired {r['paired_ratio']:.3f})"
        )
    set_adapter_weights(engine, "model")
    out["no_adapter_wrapped"] = summarize(base_runs)
    return out


def bench_serving(engine, args) -> dict:
    """Every run draws its own requests (another seed, the same distributions) and starts
    with an empty prefix cache: no run is served from keys an earlier one computed."""
    out: dict[str, Any] = {}
    names64 = [f"a{i}" for i in range(64)]
    engine.preload(names64)
    paged = engine.scheduler.paged
    seeds = iter(range(100, 200))

    def run(adapters: list, rate: float | None) -> dict:
        paged.alloc.reset_prefixes()
        seed = next(seeds)
        return serve(
            engine,
            workload(args.requests, adapters=adapters, seed=seed, **lengths(args)),
            rate,
            seed=seed,
        )

    log("serving warm-up (records the decode graphs of the row buckets)")
    serve(engine, workload(args.warmup_requests, adapters=names64, seed=99, **lengths(args)), None)
    paged.alloc.reset_prefixes()
    idle = workload(args.idle_samples, adapters=names64, seed=98, **lengths(args))
    # each once unmeasured first: a prompt length the warm-up did not have compiles the
    # kernels it needs (seconds, once), which is not an idle request's TTFT
    idle_ttft(engine, idle)
    paged.alloc.reset_prefixes()  # and none of them served from the first pass's prefixes
    out["idle_ttft"] = idle_ttft(engine, idle)
    log(
        f"  idle TTFT {json.dumps({k: v for k, v in out['idle_ttft'].items() if k != 'prompt_tokens'})}"
    )
    sat = run(names64, None)
    out["adapters_64_saturation"] = sat
    rate = sat["request_rate_rps"]
    log(
        f"  saturation: {rate:.1f} req/s, {sat['output_tok_s']:.0f} out tok/s, TTFT p99 {sat['ttft_ms']['p99']:.0f} ms"
    )
    for frac in (0.5, 0.8, 1.0):
        r = run(names64, frac * rate)
        out[f"adapters_64_rate_{int(frac * 100)}"] = r
        log(
            f"  64 adapters at {frac:.0%}: TTFT p50/p99 {r['ttft_ms']['p50']:.0f}/{r['ttft_ms']['p99']:.0f} ms, TPOT p99 {r['tpot_ms']['p99']:.1f} ms, failed {r['failed']}"
        )
    r = run([None], 0.8 * rate)
    out["base_rate_80"] = r
    log(f"  base alone at 80%: TTFT p99 {r['ttft_ms']['p99']:.0f} ms, failed {r['failed']}")
    for k in (1, 8, args.registered):
        r = run([f"a{i}" for i in range(k)], 0.8 * rate)
        out[f"adapters_{k}_rate_80"] = r
        log(
            f"  {k} adapters at 80%: TTFT p99 {r['ttft_ms']['p99']:.0f} ms, out {r['output_tok_s']:.0f} tok/s, failed {r['failed']}"
        )
    return out


def bench_memory(engine, args) -> dict:
    log(f"memory: {args.memory_rows} sequences of {args.memory_context} tokens at once")
    engine.preload([f"a{i}" for i in range(64)])
    # half prompt, half new tokens: a sequence lives as long as all the prompts take to prefill
    # (at one step budget of prompt tokens a step), so every sequence is resident at once at
    # the end; with a short answer (48 tokens) the first ones finished before the 50th was
    # admitted and the run measured the step budget, not the memory (49 rows at once)
    new = args.memory_context // 2
    gen = torch.Generator().manual_seed(3)
    reqs = [
        Request(
            torch.randint(1000, 128000, (args.memory_context - new,), generator=gen).tolist(),
            f"a{i % 64}",
            new,
        )
        for i in range(args.memory_rows)
    ]
    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine.scheduler.paged.alloc.reset_prefixes()
    r = serve(engine, reqs, None)
    paged = engine.scheduler.paged
    r["context_tokens"] = args.memory_context
    r["new_tokens"] = new
    r["kv_cache_gib"] = paged.cache.nbytes() / 2**30
    r["slot_stack_gib"] = engine.slots.slot_bytes() / 2**30
    r["resident_adapters"] = len(engine.pool)
    r["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    r["device_total_gib"] = (
        torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    )
    log(f"  {json.dumps(r)}")
    return r


def adapter_step_bytes(layers: int, adapters: int, rank: int = RANK) -> int:
    """Bytes of the bf16 A and B matrices a decode step reads for ``adapters`` distinct
    adapters (rank ``rank`` on all 7 modules of ``layers`` Llama-3-8B-shaped layers)."""
    h, inter = LLAMA3_8B["hidden_size"], LLAMA3_8B["intermediate_size"]
    kv = LLAMA3_8B["num_key_value_heads"] * h // LLAMA3_8B["num_attention_heads"]
    widths = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    return 2 * rank * sum(i + o for i, o in widths) * layers * adapters


def goals(res: dict) -> dict:
    out: dict[str, dict] = {}
    fl, fixed = res.get("floors"), res.get("fixed", {})
    base = fixed.get("base_alone")
    if fl and base:
        x = base["decode_tok_s"] / fl["gemm_floor_tok_s"]
        out["base decode at batch 32 >= 70% of the GEMM floor"] = {
            "met": x >= 0.7,
            "detail": f"{base['decode_tok_s']:,.0f} decode tok/s = {x:.0%} of the GEMM floor "
            f"({fl['gemm_floor_tok_s']:,.0f} tok/s, {fl['gemm_step_ms']:.2f} ms a step); weight-read "
            f"floor {fl['read_floor_tok_s']:,.0f} tok/s ({base['decode_tok_s'] / fl['read_floor_tok_s']:.0%})",
        }
    a32 = fixed.get("adapters_32")
    if base and a32:
        x = a32["decode_tok_s"] / base["decode_tok_s"]
        bound = ""
        if fl:  # the adapters' own bytes at the measured bandwidth, in series after base's step
            # (only overlap with the base step's own slack, which runs below the weight-read
            # floor, can pass this)
            config = res.get("config", {})
            step = config.get("rows", 32) / base["decode_tok_s"]
            nbytes = adapter_step_bytes(config.get("layers", 32), 32)
            extra = nbytes / (fl["reduction_bandwidth_tb_s"] * 1e12)
            b = step / (step + extra)
            bound = (
                f"; read in series after this base's {step * 1e3:.2f} ms step, the 32 adapters' A and "
                f"B ({nbytes / 1e9:.2f} GB, {extra * 1e3:.2f} ms at {fl['reduction_bandwidth_tb_s']:.2f} "
                f"TB/s) bound it at {b:.3f}x: ours is {x / b:.0%} of that; only overlap with the base "
                f"step's slack passes it"
            )
        out["32 distinct adapters >= 0.9x base alone"] = {
            "met": x >= 0.9,
            "detail": f"{a32['decode_tok_s']:,.0f} / {base['decode_tok_s']:,.0f} = {x:.3f}x "
            f"(paired with base runs of the same engine: {a32['paired_ratio']:.3f}x; 1 and 8 distinct: "
            + ", ".join(
                f"{fixed[f'adapters_{k}']['decode_tok_s'] / base['decode_tok_s']:.3f}x"
                for k in (1, 8)
            )
            + ")"
            + bound,
        }
    q32 = fixed.get("adapters_32_int8")
    if base and q32:
        x = q32["decode_tok_s"] / base["decode_tok_s"]
        out["32 distinct adapters, int8 adapter weights (an option), >= 0.9x base alone"] = {
            "met": x >= 0.9,
            "detail": f"{q32['decode_tok_s']:,.0f} / {base['decode_tok_s']:,.0f} = {x:.3f}x (paired: "
            f"{q32['paired_ratio']:.3f}x); half the adapter bytes of bf16 "
            f"({adapter_step_bytes(res.get('config', {}).get('layers', 32), 32) / 2e9:.2f} GB a step); "
            "the bf16 goal above stands on its own",
        }
    hf = res.get("hf", {}).get("fixed")
    if base and hf:
        x = base["e2e_tok_s"] / hf["e2e_tok_s"]
        out["end to end on 32 x 128 -> 128 >= 1.5x transformers static-cache compiled generate"] = {
            "met": x >= 1.5,
            "detail": f"ours {base['e2e_tok_s']:,.0f} tok/s vs transformers {hf['e2e_tok_s']:,.0f} tok/s "
            f"= {x:.2f}x (compiled: {hf['compiled']}); with 32 distinct adapters "
            + (f"{a32['e2e_tok_s'] / hf['e2e_tok_s']:.2f}x" if a32 else "not run"),
        }
    sv = res.get("serving", {})
    r80, idle = sv.get("adapters_64_rate_80"), sv.get("idle_ttft")
    if r80 and idle:
        x = r80["ttft_ms"]["p99"] / idle["p99_ms"]
        out["Poisson at 80% of saturation, 64 adapters: TTFT p99 <= 5x idle, no failures"] = {
            "met": x <= 5 and r80["failed"] == 0,
            "detail": f"TTFT p99 {r80['ttft_ms']['p99']:.0f} ms vs idle p99 {idle['p99_ms']:.0f} ms = {x:.2f}x "
            f"(vs idle p50 {idle['p50_ms']:.0f} ms: {r80['ttft_ms']['p99'] / idle['p50_ms']:.1f}x); "
            f"{r80['failed']} failed of {r80['requests']}; {r80['rate_rps']:.1f} req/s",
        }
    mem = res.get("memory")
    if mem:
        ok = (
            mem["max_rows"] >= 256
            and mem["completed"] == mem["requests"] >= 256
            and mem["preemptions"] == 0
        )
        out[">= 256 concurrent sequences of 2,048 tokens with adapters resident"] = {
            "met": bool(ok and mem["context_tokens"] >= 2048),
            "detail": f"{mem['max_rows']} rows at once, {mem['completed']}/{mem['requests']} completed, "
            f"{mem['preemptions']} preemptions, context {mem['context_tokens']}, KV {mem['kv_cache_gib']:.1f} GiB "
            f"(peak {mem['kv_blocks_peak']} of {mem['kv_blocks']} blocks), {mem['resident_adapters']} adapters "
            f"resident, peak allocated {mem['peak_allocated_gib']:.1f} of {mem['device_total_gib']:.0f} GiB",
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--smoke", action="store_true", help="every section on a 2-layer cut, small counts"
    )
    p.add_argument("--check", action="store_true", help="the harness on the CPU (no figures)")
    p.add_argument("--sections", default="floors,hf,fixed,serving,memory")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup-requests", type=int, default=96)
    p.add_argument("--idle-samples", type=int, default=16)
    p.add_argument("--hf-serving", type=int, default=64, help="serving prompts for transformers")
    p.add_argument("--registered", type=int, default=1000)
    p.add_argument("--host-buffers", type=int, default=128)
    p.add_argument("--resident", type=int, default=128)
    p.add_argument("--max-rows", type=int, default=256)
    p.add_argument("--memory-rows", type=int, default=256)
    p.add_argument("--memory-context", type=int, default=2048)
    p.add_argument("--kv-tokens", type=int, default=None)
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a JSON of an earlier run whose other sections this run's results join (split a "
        "run over two commands with --sections)",
    )
    p.add_argument("--max-prompt", type=int, default=2048, help="longest serving prompt")
    p.add_argument("--max-output", type=int, default=512, help="longest serving output")
    args = p.parse_args()
    if args.smoke:
        args.layers, args.reps, args.requests, args.warmup_requests = 2, 1, 24, 8
        args.idle_samples, args.hf_serving, args.registered, args.host_buffers = 4, 8, 80, 8
        args.resident, args.max_rows, args.memory_rows, args.memory_context = 72, 32, 32, 512
    global DEVICE
    if args.check:
        DEVICE = "cpu"
        args.sections = ",".join(x for x in args.sections.split(",") if x != "floors")
        args.rows, args.prompt_len, args.new_tokens, args.reps = 4, 16, 8, 1
        args.requests, args.warmup_requests, args.idle_samples, args.hf_serving = 12, 4, 3, 4
        args.registered, args.host_buffers, args.resident = 70, 4, 66
        args.max_rows, args.memory_rows, args.memory_context = 16, 16, 128
        args.max_prompt, args.max_output = 256, 48
    if args.kv_tokens is None:  # the memory section's sequences, plus room to admit them
        args.kv_tokens = int(max(args.memory_rows, args.max_rows) * args.memory_context * 1.03)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_serving.py needs a CUDA device (--check runs the harness on CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.enable_cudnn_sdp(False)  # as bench_gpu.py: no per-length cuDNN plans
    sections = set(args.sections.split(","))
    name = (
        "gpu_serving_check" if args.check else "gpu_serving_smoke" if args.smoke else "gpu_serving"
    )
    res: dict[str, Any] = json.loads(args.resume.read_text()) if args.resume else {}
    here = env()
    if res.get("env", {}).get("device", here["device"]) != here["device"]:
        sys.exit(
            f"--resume: {args.resume} was measured on {res['env']['device']}, this machine has "
            f"{here['device']}; its figures and this run's would not compare"
        )
    command = "python benchmarks/bench_gpu_serving.py " + " ".join(sys.argv[1:])
    res["commands"] = [*res.get("commands", []), command]
    res.update(
        env=here,
        command=" ; ".join(res["commands"]),
        config={
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"
        },
    )

    def save() -> None:
        res["goals"] = goals(res)
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
        (args.out / f"{name}.md").write_text(markdown(res))

    log(f"env: {res['env']}")
    if args.check:
        model = build_model("cpu", torch.float32, **CHECK_MODEL)
    else:
        model = build_model("cuda", torch.bfloat16, num_hidden_layers=args.layers)
    fuse(model)
    # the serving prompts transformers runs (base model), and ours after it on the same
    hf_prompts = workload(args.hf_serving, adapters=[None], seed=1, **lengths(args))
    if "floors" in sections:
        res["floors"] = floors(model, rows=args.rows)
        log(f"floors: {json.dumps(res['floors'])}")
        save()
    if "hf" in sections:
        res["hf"] = bench_hf(model, args, hf_prompts)
        save()
    engine = make_engine(model, args)
    res["engine"] = {"paged": engine.scheduler.paged.stats(), "max_rows": args.max_rows}
    if "fixed" in sections:
        res["fixed"] = {"base_alone": bench_fixed_base(engine, args)}
        save()
    register(engine, args)
    if "fixed" in sections:
        res["fixed"].update(bench_fixed_adapters(engine, args))
        save()
    if "serving" in sections:
        res["serving"] = bench_serving(engine, args)
        if args.hf_serving and res.get("hf", {}).get("serving"):
            # beside transformers' figures on the same prompts (this run's, or the resumed
            # file's: a split run keeps the row)
            engine.scheduler.paged.alloc.reset_prefixes()
            res["serving"]["ours_on_hf_prompts"] = serve(engine, hf_prompts, None)
        save()
    if "memory" in sections:
        res["memory"] = bench_memory(engine, args)
        save()
    res["engine"]["paged_end"] = engine.scheduler.paged.stats()
    save()
    engine.close()
    gc.collect()
    print(markdown(res))


def markdown(res: dict) -> str:
    from gpu_serving_report import render

    return render(res)


if __name__ == "__main__":
    main()
