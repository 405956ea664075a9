"""Graphed decode LoRA kernels on one H200: tiles of 16 tokens (SplitLauncher) against one
row per program (RowLauncher, Punica's BGMV form), at the layer and end to end. The engine's
default, ``auto``, picks one of the two per recorded graph (``decode_kernel_for``).

1. Layer level: each LoRA group of one Llama-3-8B-shaped layer at batch 32 and 1/8/32
   distinct adapters, as graphed decode steps run it (base GEMM on the main stream, LoRA
   shrink and expand on a side stream, one add; or the expand after the GEMM, adding onto
   its product), recorded as a CUDA graph of 10 calls and replayed; beside the bare GEMM of
   the group. Also each variant's LoRA part against an fp32 reference.
2. End to end: the 32-layer model in our engine, decode tokens/s of base alone and of ours
   with each kernel and ``auto`` at 8, 32, 16 and 1 distinct adapters (the bench_gpu
   protocol, fewer repeats).

``--sweep shapes|fine|multirow`` first tries a grid of each kernel's launch shapes at the
layer level, then times the best of each (tiles over 1 and 8 distinct, rows over 8 and 32)
and ``auto`` end to end. ``shapes`` is the grid that chose the launchers' defaults (shrink
programs wanted, input slices, expand columns, inputs a shrink step, where the expand goes);
``fine`` varies columns, warps and steps around them; ``multirow`` the rows a row-expand
program serves. ``--parts`` only times each piece of a group's step alone; ``--e2e CASES``
only runs those cases end to end, and with ``--profile`` also traces each one's decode step
(torch.profiler) to split its device time into GEMMs, LoRA kernels, L2 hints, attention and
the rest.

Writes ``<name>.json`` and ``.md`` (``--name``, default ``gpu_decode_kernels``) into
``--out`` after every case (a run cut short keeps what it measured):

    python benchmarks/bench_gpu_decode_kernels.py [--sweep shapes|fine|multirow] --out DIR
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu as bg  # noqa: E402

# name -> (kernel, {family: launcher class attributes}); the default run compares these
Attrs = dict[str, dict[str, int]]
VARIANTS: dict[str, tuple[str, Attrs]] = {
    "tiles": ("tiles", {}),
    "rows": ("rows", {}),
    "tiles_adds": ("tiles", {"tiles": {"adds": 1}}),
    "rows_adds": ("rows", {"rows": {"adds": 1}}),
    # the offsets' alignment told to the compiler (tiles) or not (rows): the other way
    "tiles_aligned": ("tiles", {"tiles": {"max_align": 16}}),
    "rows_noalign": ("rows", {"rows": {"max_align": 1}}),
    # auto with the side stream at the default priority (0; the default is the highest)
    # and/or the GEMM launched first
    "auto_prio0": ("auto", {"group": {"side_priority": 0}}),
    "auto_prio0_gemm_first": ("auto", {"group": {"side_priority": 0, "gemm_first": 1}}),
    "auto_gemm_first": ("auto", {"group": {"gemm_first": 1}}),
    # no side stream: the fused kernel before the GEMM, as in eager steps
    "auto_serial": ("auto", {"group": {"overlap": 0}}),
    # the paged engine's deltas joined by adds of their own, not inside its fused ops
    "auto_own_adds": ("auto", {"group": {"fused_adds": 0}}),
    # int8 adapter weights in the slots (half the bytes a step reads per adapter), and the
    # rows kernels' launch shapes around their defaults for them (each program reads half
    # the bytes of bf16's at the same shape)
    "auto_int8": ("auto", {"slots": {"int8": 1}}),
    "auto_w8": ("auto", {"rows": {"warps": 8}}),  # bf16 rows kernels at 8 warps
    # the base GEMM beside the LoRA told to leave that many SMs free (cuBLASLt's SM count
    # target), and cuBLASLt alone (every GEMM of the engine, no SMs left free)
    **{f"auto_c{c}": ("auto", {"group": {"gemm_sm_carveout": c}}) for c in (4, 8, 16, 24, 32)},
    "auto_int8_c16": ("auto", {"slots": {"int8": 1}, "group": {"gemm_sm_carveout": 16}}),
    "auto_lt": ("auto", {"blas": {"lt": 1}}),
    # each group hints the slot regions after it into L2 (KiB of a slot past its end, at
    # least the next group; n: at normal eviction priority, not evict-last)
    **{f"auto_pf{k}": ("auto", {"group": {"l2_prefetch": k}}) for k in (1, 768, 1536, 2560)},
    "auto_pfn1536": ("auto", {"group": {"l2_prefetch": 1536, "l2_evict_last": 0}}),
    # hints only after the q/k/v GEMM, beside attention: the o group (pfa1), o and gate/up
    # (1408 KiB of a slot), the rest of the layer (1984); n: normal eviction priority
    **{
        f"auto_pfa{k}": ("auto", {"group": {"l2_prefetch": k, "l2_prefetch_at": "attention"}})
        for k in (1, 1408, 1984)
    },
    "auto_pfan1408": (
        "auto",
        {"group": {"l2_prefetch": 1408, "l2_prefetch_at": "attention", "l2_evict_last": 0}},
    ),
    "auto_int8_pf768": ("auto", {"slots": {"int8": 1}, "group": {"l2_prefetch": 768}}),
    # the hints joined only at the end of the step, not by the next group's LoRA kernels
    "auto_pf1536_nojoin": ("auto", {"group": {"l2_prefetch": 1536}, "hints": {"join": 0}}),
    **{
        f"auto_pf{k}_c{c}": ("auto", {"group": {"l2_prefetch": k, "gemm_sm_carveout": c}})
        for k in (768, 1536)
        for c in (0, 16)
    },
    **{
        f"auto_int8_w{w}" + (f"_n{n}" if n else "") + (f"_k{k}" if k else ""): (
            "auto",
            {
                "slots": {"int8": 1},
                "rows": {
                    "int8_warps": w,
                    **({"block_n": n} if n else {}),
                    **({"block_k": k} if k else {}),
                },
            },
        )
        for w, n, k in (
            (8, 0, 0),
            (16, 0, 0),
            (8, 512, 0),
            (8, 0, 2048),
            (16, 0, 2048),
            (8, 128, 0),
            (4, 0, 0),
        )
    },  # fmt: skip
}


def grid(kernel: str, base: dict[str, int], **axes: tuple[str, tuple]) -> dict:
    """Variants of ``kernel`` over every combination of ``axes`` (``short=(attribute,
    values)``), on top of ``base``; named like ``tiles_f132_s16``."""
    out = {}
    for values in itertools.product(*(vals for _, vals in axes.values())):
        attrs = {**base, **{attr: v for (attr, _), v in zip(axes.values(), values, strict=True)}}
        label = "_".join([kernel, *(f"{k}{v}" for k, v in zip(axes, values, strict=True))])
        out[label] = (kernel, {kernel: attrs})
    return out


# --sweep shapes: launch shapes of each kernel (shrink programs wanted, most input slices,
# expand columns or input columns a step) and where the expand goes (adds onto the GEMM's
# product, or a delta buffer joined by an add); the rest as it was then (128 columns a dot
# or a row program, 128 inputs a tile shrink step, 4 warps, offsets' alignment not told)
_THEN = {"block_n": 128, "block_k": 128, "warps": 4, "max_align": 1}
SHAPES: dict[str, tuple[str, Attrs]] = {
    **grid("tiles", _THEN, f=("fill", (132, 528, 2112)), s=("max_split", (16, 64)),
           c=("expand_cols", (128, 512)), a=("adds", (1, 0))),
    **grid("rows", _THEN, f=("fill", (264, 1056, 4224)), s=("max_split", (16, 64)),
           k=("block_k", (128, 512)), a=("adds", (1, 0))),
}  # fmt: skip
# --sweep fine: around the defaults that the first grid chose (columns a dot or a row
# program, warps, expand columns, inputs a shrink step)
_TILES = {"fill": 528, "max_split": 16, "block_k": 128, "adds": 0, "max_align": 1}
_ROWS = {"fill": 1056, "max_split": 16, "adds": 0, "max_align": 1}
FINE: dict[str, tuple[str, Attrs]] = {
    **grid("tiles", _TILES, n=("block_n", (64, 128)), c=("expand_cols", (128, 256)),
           w=("warps", (2, 4, 8))),
    **grid("rows", _ROWS, n=("block_n", (128, 256, 512)), k=("block_k", (512, 1024)),
           w=("warps", (2, 4, 8))),
}  # fmt: skip
# --sweep multirow: rows an expand program serves (each with its own adapter) against the
# columns it covers, and warps (offsets' alignment not told, as then); tiles as they are
MULTIROW: dict[str, tuple[str, Attrs]] = {
    "tiles": ("tiles", {}),
    **{
        f"rows_m{m}_n{n}_w{w}": (
            "rows",
            {"rows": {"rows_per_program": m, "block_n": n, "warps": w, "max_align": 1}},
        )
        for m, n in ((1, 256), (2, 128), (4, 64), (1, 512), (2, 256), (4, 128), (8, 64),
                     (4, 256), (8, 128))
        for w in (4, 8)
    },
}  # fmt: skip
SWEEPS = {"shapes": SHAPES, "fine": FINE, "multirow": MULTIROW}
# the launchers' attributes before any variant changed them: their defaults, the best of
# both grids (tiles_n128_c256_w8 and rows_n256_k1024_w4 of the fine one)
_DEFAULTS: dict[str, dict[str, Any]] = {}
KEYS = (
    "fill", "max_split", "expand_cols", "block_n", "block_k", "warps", "int8_warps", "adds",
    "rows_per_program", "max_align",
)  # fmt: skip
# LoraKernelConfig fields a variant may set
GROUP_KEYS = (
    "side_priority", "gemm_first", "overlap", "fused_adds", "gemm_sm_carveout", "l2_prefetch",
    "l2_evict_last", "l2_prefetch_at",
)  # fmt: skip


def use(kernel: str, attrs: Attrs, groups) -> None:
    """Make ``kernel`` (with these launcher attributes over the defaults) what graphed steps
    run from now on."""
    from loraroute.agents.lora.launchers import RowLauncher, SplitLauncher

    layers = groups[0].layers
    if "blas" not in _DEFAULTS:
        _DEFAULTS["blas"] = {"library": torch.backends.cuda.preferred_blas_library()}
    lt = attrs.get("blas", {}).get("lt")
    torch.backends.cuda.preferred_blas_library("cublaslt" if lt else _DEFAULTS["blas"]["library"])
    # int8 slots or the model's dtype (a re-layout: the caller's groups are gone after it)
    layers.adapter_weights = "int8" if attrs.get("slots", {}).get("int8") else "model"
    config = layers.config
    config.decode_kernel = kernel
    if "group" not in _DEFAULTS:
        _DEFAULTS["group"] = {k: getattr(config, k) for k in GROUP_KEYS}
    for key, value in {**_DEFAULTS["group"], **attrs.get("group", {})}.items():
        if key in GROUP_KEYS:
            setattr(config, key, type(_DEFAULTS["group"][key])(value))
    adds = {bool(attrs.get(f, {}).get("adds", 0)) for f in ("tiles", "rows")}
    config.expand_adds = True in adds
    for family, cls in (("tiles", SplitLauncher), ("rows", RowLauncher)):
        if family not in _DEFAULTS:
            _DEFAULTS[family] = {
                k: getattr(cls, k) for k in KEYS if hasattr(cls, k) and k != "adds"
            }
        for key, value in {**_DEFAULTS[family], **attrs.get(family, {})}.items():
            if key != "adds":
                setattr(cls, key, value)
    from loraroute.agents.lora.layer import LoraGroup

    LoraGroup.join_hints = bool(attrs.get("hints", {}).get("join", 1))
    for group in groups:  # launchers fix their tables when built
        group._split_launcher = group._row_launcher = None


def timed_graph(fn, calls: int = 10, replays: int = 20) -> float:
    """Device microseconds per call of ``fn``, replayed from a CUDA graph of ``calls`` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * replays)


def one_layer() -> tuple[Any, Any]:
    """One Llama-3-8B-shaped layer with 64 random rank-16 adapters in its slots."""
    from loraroute.agents.lora import SlotLayers

    layer = bg.build_model("cuda", torch.bfloat16, num_hidden_layers=1, vocab_size=256)
    slots = SlotLayers(layer, 65, r_max=bg.RANK, backend="triton")
    tmpl = bg.template_weights(layer, bg.RANK, seed=1)
    for s in range(1, 65):
        slots.write(s, bg.renamed(tmpl, s))
    torch.cuda.synchronize()
    slots.context.wait_copies()
    slots.stack[1:].normal_(0, 0.02)
    return layer, slots


def each_group(rows: int, counts, out: dict, what: str):
    """``(plan, group, x2, w_t, entry)`` for each group of one layer at each count of distinct
    adapters (rows take them in turn), with a random input ``x2``, the group's base weight
    ``w_t`` and its bare GEMM timed into ``entry``; ``entry`` lands in ``out`` and the log."""
    from loraroute.agents.lora import StaticPlanBuffers

    layer, slots = one_layer()
    for distinct in counts:
        bufs = StaticPlanBuffers(rows, torch.device("cuda"))
        bufs.write([1 + (i % distinct) for i in range(rows)])
        plan = bufs.plan(1, slots.config)
        res = out[f"distinct_{distinct}"] = {}
        for group in slots.groups:
            name = "+".join(m.name.rsplit(".", 1)[-1] for m in group.members)
            x2 = torch.randn(rows, group.in_features, device="cuda", dtype=torch.bfloat16)
            w_t = group.w_cat_t if group.w_cat_t is not None else group.members[0].base.weight.t()
            entry = {"gemm": timed_graph(lambda x2=x2, w_t=w_t: torch.mm(x2, w_t))}
            yield plan, group, x2, w_t, entry
            res[name] = {k: round(v, 2) if k != "max_rel_diff" else v for k, v in entry.items()}
        bg.log(f"{what}, {distinct} distinct: {json.dumps(res)}")
    use("auto", {}, slots.groups)
    del layer, slots
    torch.cuda.empty_cache()


def parts(rows: int = 32, counts=(1, 8, 16, 32)) -> dict:
    """Each piece of a group's graphed step alone (one stream, graph-replayed): the GEMM, the
    shrink, the expand into a delta buffer, the add; beside the whole as graphed steps run it
    (``overlapped``), for the launchers' defaults."""
    out: dict[str, Any] = {}
    for plan, group, x2, w_t, entry in each_group(rows, counts, out, "parts"):
        tok, tile_slot, tiles = plan.tiles(1)
        y = torch.mm(x2, w_t)
        delta = torch.empty_like(y)
        entry["add"] = timed_graph(lambda y=y, delta=delta: y.add_(delta))
        for kernel in ("tiles", "rows"):
            use(kernel, {}, [group])
            group._overlapped(x2, plan)  # builds the launcher
            launcher = group._row_launcher if kernel == "rows" else group._split_launcher
            where = (plan.idx(),) if kernel == "rows" else (tok, tile_slot, tiles)
            part, split = launcher.shrink(x2, *where)

            def shrink(launcher=launcher, x2=x2, where=where):
                launcher.shrink(x2, *where)

            def expand(launcher=launcher, delta=delta, part=part, split=split, where=where):
                launcher.expand(delta, part, split, *where)

            def whole(group=group, x2=x2, plan=plan):
                group._overlapped(x2, plan)

            entry[f"{kernel}_shrink"] = timed_graph(shrink)
            entry[f"{kernel}_expand"] = timed_graph(expand)
            entry[f"{kernel}_overlapped"] = timed_graph(whole)
    return out


def layer_level(variants: dict, rows: int = 32, counts=(1, 8, 32)) -> dict:
    """Each variant's graphed step of each group, and its LoRA part against an fp32
    reference."""
    out: dict[str, Any] = {}
    for plan, group, x2, w_t, entry in each_group(rows, counts, out, "layer"):
        # the LoRA part in fp32 from the slot stack, per row (gather), as a reference
        idx = plan.idx()
        xf = x2.float()[:, None, :]
        t = torch.bmm(xf, group.a.index_select(0, idx).float().transpose(1, 2))[:, 0]
        r = group.r
        want = torch.cat(
            [
                torch.bmm(t[:, None, i * r : (i + 1) * r],
                          b.index_select(0, idx).float().transpose(1, 2))[:, 0]
                for i, b in enumerate(group.b)
            ],
            1,
        )  # fmt: skip
        base_f = x2.float() @ w_t.float()
        worst = 0.0
        for label, (kernel, attrs) in variants.items():
            use(kernel, attrs, [group])
            one_stream = attrs.get("group", {}).get("one_stream", 0)

            def call(group=group, x2=x2, plan=plan, one_stream=one_stream):
                side = plan.side
                if one_stream:  # the shrink on the GEMM's stream, before it
                    plan.side = torch.cuda.current_stream()
                try:
                    return group._overlapped(x2, plan)
                finally:
                    plan.side = side

            entry[label] = timed_graph(call)
            got = torch.cat([d.float() for d in call()], 1) - base_f
            worst = max(worst, float((got - want).norm() / want.norm()))
        # every variant's LoRA part (its output less the fp32 base product) against the fp32
        # reference: bf16 rounding of the output shows here, about 1e-2
        entry["max_rel_diff"] = float(f"{worst:.3g}")
    return out


def over_gemm(layer: dict, label: str, distinct: int) -> float:
    """Microseconds ``label`` adds to one layer's GEMMs at ``distinct`` adapters."""
    return sum(g[label] - g["gemm"] for g in layer[f"distinct_{distinct}"].values())


def overhead_table(layer: dict) -> list[str]:
    """Markdown rows: each variant's :func:`over_gemm` at each count."""
    first = next(iter(layer.values()))
    labels = [k for k in next(iter(first.values())) if k != "gemm" and not k.endswith("_diff")]
    counts = [int(k.split("_")[1]) for k in layer]
    lines = [
        "| variant | " + " | ".join(f"{d} distinct" for d in counts) + " |",
        "| --- | " + " | ".join("---" for _ in counts) + " |",
    ]
    for label in labels:
        cells = " | ".join(f"{over_gemm(layer, label, d):.1f}" for d in counts)
        lines.append(f"| {label} | {cells} |")
    return lines


def best(layer: dict, variants: dict, kernel: str, counts) -> str:
    """The variant of ``kernel`` with the least time over the GEMMs, summed over the groups
    and ``counts``."""
    over = {
        label: sum(over_gemm(layer, label, d) for d in counts)
        for label, (k, _) in variants.items()
        if k == kernel
    }
    return min(over, key=over.__getitem__)


# kernel kinds of a profiled step, by the first pattern its name contains (lower case)
KINDS = (
    ("hints", ("l2_prefetch",)),
    ("lora", ("lora",)),
    ("attention", ("attn", "attention", "flash", "flex")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, pats in KINDS if any(p in low for p in pats)), "other")


def kernel_trace(engine, names, ids, new_tokens: int) -> list[tuple[float, float, str]]:
    """``(start_us, end_us, kind)`` of every kernel of one run of ``engine`` (graph replays
    included: CUPTI reports the kernels of a replayed graph)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        bg.run_engine(engine, names, ids, new_tokens)
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sorted(
        (e.time_range.start, e.time_range.end, kind_of(e.name))
        for e in prof.events()
        if e.device_type == cuda and e.time_range.end > e.time_range.start
    )


def busy_us(spans) -> float:
    """Microseconds covered by the union of ``(start, end)`` spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_step(engine, names, ids, steps: int = 32) -> dict:
    """What one decode step's device time goes to: the difference of two profiled runs,
    ``steps`` and ``2 * steps`` new tokens (prefill and start-up cancel), divided by
    ``steps``: kernel time by kind (summed over streams), and the device's busy time (any
    kernel running). ``attention_gap_us``: the median stretch between the end of the last
    GEMM before an attention kernel and the start of the next GEMM (what runs between the
    q/k/v and o projections: rotary, the KV write, attention, and anything beside them)."""
    runs = [kernel_trace(engine, names, ids, n) for n in (steps, 2 * steps)]
    per_step = {}
    for kind in ("gemm", "lora", "hints", "attention", "other"):
        t = [sum(e - s for s, e, k in run if k == kind) for run in runs]
        per_step[kind] = round((t[1] - t[0]) / steps, 1)
    busy = [busy_us([(s, e) for s, e, _ in run]) for run in runs]
    gemm_busy = [busy_us([(s, e) for s, e, k in run if k == "gemm"]) for run in runs]
    with_lora = [busy_us([(s, e) for s, e, k in run if k in ("gemm", "lora")]) for run in runs]
    gemms = [(s, e) for s, e, k in runs[1] if k == "gemm"]  # sorted by start
    starts = [s for s, _ in gemms]
    ends = list(itertools.accumulate((e for _, e in gemms), max))  # latest end so far
    gaps = []
    for s, _, k in runs[1]:
        i = bisect.bisect_left(starts, s)  # GEMMs [0, i) start before this kernel
        if k == "attention" and 0 < i < len(starts):
            gaps.append(starts[i] - ends[i - 1])
    gaps.sort()
    return {
        "kernel_us": per_step,
        "busy_us": round((busy[1] - busy[0]) / steps, 1),
        "gemm_busy_us": round((gemm_busy[1] - gemm_busy[0]) / steps, 1),
        # LoRA kernels running while no GEMM does
        "lora_outside_gemm_us": round(
            (with_lora[1] - with_lora[0] - gemm_busy[1] + gemm_busy[0]) / steps, 1
        ),
        "attention_gap_us": round(gaps[len(gaps) // 2], 1) if gaps else None,
        "attention_kernels_a_step": round(len(gaps) / (2 * steps), 1),
    }


def end_to_end(args, cases: dict, counts, results: dict, save) -> None:
    """Decode tokens/s of base alone and ours for each case (``name -> (kernel, attrs)``);
    with ``args.profile``, also where each one's decode step spends its device time."""
    # the KV cache each engine needs, not the model's full context for every row: two
    # engines fit an 80 GB card
    kv = {"kv_cache_tokens": args.concurrency * (args.prompt_len + args.new_tokens + 64)}
    base_model = bg.build_model("cuda", torch.bfloat16, num_hidden_layers=args.layers)
    base = bg.new_engine(
        base_model, args, name="base-alone", max_resident=1, max_cpu_adapters=0, **kv
    )
    model = bg.build_model("cuda", torch.bfloat16, num_hidden_layers=args.layers)
    engine = bg.new_engine(model, args, name="ours", max_resident=64, max_cpu_adapters=40, **kv)
    ids = bg.prompts(args.concurrency, args.prompt_len)
    n = len(ids)
    for e in (base, engine):
        bg.run_engine(e, [None] * n, ids, args.new_tokens)
    tmpl = bg.template_weights(model, bg.RANK, seed=1)
    engine.add_adapter(bg.renamed(tmpl, 0), name="warm", load=False)
    for i in range(32):
        packed = bg.random_packed(engine, tmpl, seed=i)
        engine.add_adapter(bg.renamed(tmpl, i + 1), name=f"a{i}", load=False, packed=packed)
    inter = bg.Interleaved(base, ids, args.new_tokens)
    if args.profile:
        results["base_engine_profile"] = profile_step(base, [None] * n, ids)
        bg.log(f"base profile {results['base_engine_profile']}")
        save()
    for distinct in counts:
        names = [f"a{i % distinct}" for i in range(n)]
        engine.preload(sorted(set(names)))
        for label, (kernel, attrs) in cases.items():
            use(kernel, attrs, engine.slots.groups)
            engine.slots.context.epoch += 1  # graphs recorded with the other kernel: gone
            for _ in range(2):
                bg.run_engine(engine, names, ids, 4)
            r = inter.pair(engine, [names] * args.reps)
            if args.profile:
                r["profile"] = profile_step(engine, names, ids)
                bg.log(f"{label} {distinct:>2} distinct profile {r['profile']}")
            results[f"{label}_{distinct}"] = r
            bg.log(
                f"{label} {distinct:>2} distinct: {r['decode_tok_s']:.0f} tok/s {r['reps']}, "
                f"paired ratio {r['paired_ratio']} (base beside it {r['paired_base']})"
            )
            results["base_engine"] = bg.summarize(inter.base_runs)
            save()
    use("auto", {}, engine.slots.groups)


def profile_markdown(e2e: dict) -> list[str]:
    """The ``--profile`` table: one decode step's device time by kind of kernel."""
    rows = [("base alone", e2e.get("base_engine_profile"))]
    rows += [(k, v.get("profile")) for k, v in e2e.items() if isinstance(v, dict)]
    rows = [(label, p) for label, p in rows if p]
    if not rows:
        return []
    kinds = ("gemm", "lora", "hints", "attention", "other")
    lines = [
        "",
        "## Where a decode step's device time goes (us a step, torch.profiler)",
        "",
        "Kernel time by kind, summed over streams (so kernels running side by side both count); "
        "busy: time any kernel runs; GEMM busy: time any GEMM runs; LoRA past GEMMs: time LoRA "
        "kernels run while no GEMM does; attention stretch: the "
        "median time from the GEMM before an attention kernel to the GEMM after it, over the "
        "64-token run. The times are the difference of a 64- and a 32-token run, over 32 steps.",
        "",
        "| case | " + " | ".join(kinds) + " | busy | GEMM busy | LoRA past GEMMs | attention "
        "stretch |",
        "| --- | " + " | ".join("---" for _ in kinds) + " | --- | --- | --- | --- |",
    ]
    for label, p in rows:
        cells = " | ".join(f"{p['kernel_us'][k]:,.0f}" for k in kinds)
        gap = p["attention_gap_us"]
        lines.append(
            f"| {label} | {cells} | {p['busy_us']:,.0f} | {p['gemm_busy_us']:,.0f} | "
            f"{p.get('lora_outside_gemm_us', 0):,.0f} | "
            + (f"{gap:.1f}" if gap is not None else "-")
            + " |"
        )
    return lines


def command_flags(result: dict) -> str:
    """The flags of the run that wrote ``result`` (other than ``--out``)."""
    args = result.get("args", {})
    flags = ""
    if args.get("sweep") not in (None, "None"):
        flags += f" --sweep {args['sweep']}"
    if args.get("parts") == "True":
        flags += " --parts"
    if args.get("e2e") not in (None, "None"):
        flags += f" --e2e {args['e2e']} --counts {args['counts']} --reps {args['reps']}"
        if args.get("profile") == "True":
            flags += " --profile"
    if args.get("name") not in (None, "gpu_decode_kernels"):
        flags += f" --name {args['name']}"
    return flags


def parts_markdown(result: dict) -> list[str]:
    """The ``--parts`` table: each piece alone, and the whole as graphed steps run it."""
    lines = [
        "## Each piece of a group's graphed step alone, batch 32 (device us per call)",
        "",
        "One stream, graph-replayed: the GEMM, the add of the delta, and each kernel's shrink "
        "and expand (into the delta buffer). 'overlapped' is the whole as graphed steps run it "
        "(shrink and expand on a side stream beside the GEMM, then the add); 'hidden' is how "
        "much of the pieces' sum the overlap saves.",
        "",
        "| distinct | group | gemm | add | tiles shrink | tiles expand | tiles overlapped "
        "| hidden | rows shrink | rows expand | rows overlapped | hidden |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, groups in result["parts_us"].items():
        for name, e in groups.items():
            cells = [e["gemm"], e["add"]]
            for k in ("tiles", "rows"):
                pieces = e["gemm"] + e["add"] + e[f"{k}_shrink"] + e[f"{k}_expand"]
                cells += [
                    e[f"{k}_shrink"], e[f"{k}_expand"], e[f"{k}_overlapped"],
                    pieces - e[f"{k}_overlapped"],
                ]  # fmt: skip
            row = " | ".join(f"{c:.1f}" for c in cells)
            lines.append(f"| {key.split('_')[1]} | {name} | {row} |")
    return lines


def layer_markdown(result: dict) -> list[str]:
    """The layer-level tables: each variant's time over the GEMMs, and per group."""
    lines = [
        "## One layer's groups at batch 32, device us per call (graph of 10 calls, replayed)",
        "",
        "Each call is what a graphed decode step runs: the group's base GEMM on the main "
        "stream, the LoRA shrink and expand on a side stream into a delta buffer, and one add "
        "(variants marked `adds` or `_a1`: the expand runs after the GEMM and adds onto its "
        "product). 'gemm' is the bare GEMM.",
        "",
    ]
    layer = result["layer_us"]
    first = next(iter(layer.values()))
    labels = [k for k in next(iter(first.values())) if k != "gemm" and not k.endswith("_diff")]
    lines += [
        "Microseconds each variant adds to one layer's GEMMs (its 4 groups summed):",
        "",
        *overhead_table(layer),
    ]
    if len(labels) <= 6:
        lines += [
            "",
            "Per group:",
            "",
            "| distinct | group | gemm | " + " | ".join(labels) + " | LoRA rel. err. |",
            "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " | --- |",
        ]
        for key, groups in layer.items():
            for name, e in groups.items():
                cells = " | ".join(f"{e[k]:.1f}" for k in labels)
                lines.append(
                    f"| {key.split('_')[1]} | {name} | {e['gemm']:.1f} | {cells} | "
                    f"{e.get('max_rel_diff', e.get('rows_vs_tiles_rel', 0.0)):.1e} |"
                )
    else:
        worst = max(e.get("max_rel_diff", 0.0) for g in layer.values() for e in g.values())
        lines += [
            "",
            f"Largest relative error of any variant's LoRA part against an fp32 reference: "
            f"{worst:.1e}.",
        ]
    if "layer_us_streams" in result:
        lines += [
            "",
            "The chosen shapes again, and with the shrink on the GEMM's stream before it "
            "(`_1stream`: no second stream, no fork and join):",
            "",
            *overhead_table(result["layer_us_streams"]),
        ]
    return lines


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        "# Graphed decode LoRA kernels: 16-token tiles against one row per program ("
        f"{env['device'].replace('NVIDIA ', '')})",
        "",
        f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}. Command: "
        f"`python benchmarks/bench_gpu_decode_kernels.py{command_flags(result)} --out $OUT`.",
        "",
    ]
    if "parts_us" in result:
        lines += parts_markdown(result)
    if "layer_us" in result:
        lines += layer_markdown(result)
    e2e = result.get("end_to_end", {})
    base = e2e.get("base_engine")
    if base:
        lines += [
            "",
            "## End to end, 32 layers, 32 requests, 128 new tokens: decode tokens/s",
            "",
            f"Base alone, pooled over the {base['runs']} runs interleaved with ours: "
            f"{base['decode_tok_s']:,.0f}. 'x base, paired': the mean ratio of each run to the "
            "base run just before it.",
            "",
        ]
        runs = [k for k in e2e if not k.startswith("base_engine")]
        cases = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in runs))
        lines += [
            "| distinct | " + " | ".join(f"{c} | x base, paired" for c in cases) + " |",
            "| --- | " + " | ".join("--- | ---" for _ in cases) + " |",
        ]
        for d in sorted({int(k.rsplit("_", 1)[1]) for k in runs}):
            cells = []
            for c in cases:
                r = e2e.get(f"{c}_{d}")
                cells.append(
                    f"{r['decode_tok_s']:,.0f} | {r['paired_ratio']:.3f}" if r else "- | -"
                )
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines += profile_markdown(e2e)
    if "chosen" in result:
        lines += ["", f"Sweep: best launch shapes chosen from the layer table: {result['chosen']}."]
    if result.get("notes"):  # written by hand into the JSON after reading a run
        lines += ["", "## Reading"]
        for note in result["notes"]:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=bg.RESULTS)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument(
        "--sweep", choices=sorted(SWEEPS), help="a grid of launch shapes of both kernels first"
    )
    p.add_argument("--name", default="gpu_decode_kernels", help="stem of the files written")
    p.add_argument(
        "--parts", action="store_true", help="only time each piece of a group's step alone"
    )
    p.add_argument("--e2e", help="only these cases (comma-separated names, or auto) end to end")
    p.add_argument("--counts", default="8,32,16,1", help="distinct adapters, with --e2e")
    p.add_argument(
        "--profile", action="store_true", help="with --e2e: profile each case's decode step"
    )
    p.add_argument("--render", type=Path, help="only write the markdown of this JSON file")
    args = p.parse_args()
    if args.render:
        md = markdown(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(md)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"env": bg.env(), "args": {k: str(v) for k, v in vars(args).items()}}

    def save() -> None:
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"{args.name}.md").write_text(markdown(result))

    if args.e2e:  # only these cases end to end
        cases = {c: VARIANTS[c] if c != "auto" else ("auto", {}) for c in args.e2e.split(",")}
        counts = tuple(int(c) for c in args.counts.split(","))
        result["end_to_end"] = {}
        end_to_end(args, cases, counts, result["end_to_end"], save)
        return
    if args.parts:
        result["parts_us"] = parts()
        save()
        return
    variants = SWEEPS[args.sweep] if args.sweep else VARIANTS
    result["layer_us"] = layer = layer_level(variants)
    save()
    cases = {"tiles": VARIANTS["tiles"], "rows": VARIANTS["rows"], "auto": ("auto", {})}
    if args.sweep:  # the best shapes of each kernel (tiles at 1-8 distinct, rows at 8-32), and auto
        tiles = best(layer, variants, "tiles", (1, 8))
        rows = best(layer, variants, "rows", (8, 32))
        # those two with the shrink on the GEMM's stream, before it (no fork and join)
        again = {label: variants[label] for label in (tiles, rows)}
        for label in (tiles, rows):
            kernel, attrs = variants[label]
            again[f"{label}_1stream"] = (kernel, {**attrs, "group": {"one_stream": 1}})
        result["layer_us_streams"] = layer_level(again)
        save()
        attrs = {**variants[tiles][1], **variants[rows][1]}  # one family each
        cases = {"tiles": variants[tiles], "rows": variants[rows], "auto": ("auto", attrs)}
        result["chosen"] = {"tiles": tiles, "rows": rows}
        bg.log(f"chosen: {result['chosen']}")
    result["end_to_end"] = {}
    end_to_end(args, cases, (8, 32, 16, 1), result["end_to_end"], save)
    bg.log("done")


if __name__ == "__main__":
    main()
