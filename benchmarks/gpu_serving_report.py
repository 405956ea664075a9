"""The markdown page of bench_gpu_serving.py's results (every section optional)."""

from __future__ import annotations


def _f(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "-"
    return f"{v:,.{digits}f}"


def render(res: dict) -> str:
    env = res.get("env", {})
    given = " ".join(f"{k}={v}" for k, v in env.get("settings", {}).items())
    lines = [
        "# GPU serving: paged KV cache, chunked prefill, fused decode (Llama-3-8B shape)",
        "",
        f"Device: {env.get('device')}; torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, triton {env.get('triton')}. Command: "
        f"`{given + ' ' if given else ''}{res.get('command')}` "
        f"(results from `$OUT` copied here). Random bf16 weights with Llama-3-8B's shapes "
        f"({res.get('config', {}).get('layers')} layers); adapters: rank 16 on q,k,v,o,gate,up,down.",
        "",
        "## Goals",
        "",
    ]
    for goal, g in res.get("goals", {}).items():
        lines.append(f"- {goal}: **{'met' if g['met'] else 'not met'}** ({g['detail']})")
    fl = res.get("floors")
    fixed = res.get("fixed", {})
    hf = res.get("hf", {})
    if fl or fixed:
        lines += [
            "",
            "## Decode step and end to end at batch 32 (32 prompts of 128 tokens -> 128 new tokens)",
            "",
            "| | decode tok/s | end to end tok/s | x GEMM floor (decode) |",
            "| --- | --- | --- | --- |",
        ]
        gf = fl["gemm_floor_tok_s"] if fl else None
        if fl:
            lines.append(
                f"| floor: the step's weight reads alone ({fl['weight_bytes'] / 1e9:.1f} GB at "
                f"{fl['reduction_bandwidth_tb_s']:.2f} TB/s, a plain reduction) | "
                f"{_f(fl['read_floor_tok_s'])} | | {fl['read_floor_tok_s'] / gf:.2f} |"
            )
            lines.append(
                f"| floor: the step's GEMMs alone, one CUDA graph ({fl['gemm_step_ms']:.2f} ms, "
                f"{fl['gemm_bandwidth_tb_s']:.2f} TB/s) | {_f(gf)} | | 1.00 |"
            )
        h = hf.get("fixed")
        if h:
            x = f"{h['decode_tok_s'] / gf:.2f}" if gf else "-"
            lines.append(
                f"| transformers `generate`, static cache, compiled ({h['compiled']}) | "
                f"{_f(h['decode_tok_s'])} | {_f(h['e2e_tok_s'])} | {x} |"
            )
        rows = (
            [("ours, base alone", "base_alone")]
            + [
                (f"ours, {k} distinct adapter{'s' if k > 1 else ''}", f"adapters_{k}")
                for k in (1, 8, 32)
            ]
            + [("ours, 32 distinct adapters, int8 adapter weights", "adapters_32_int8")]
            + [("ours, adapters registered, none in the batch", "no_adapter_wrapped")]
        )
        for label, key in rows:
            r = fixed.get(key)
            if r:
                x = f"{r['decode_tok_s'] / gf:.2f}" if gf else "-"
                lines.append(f"| {label} | {_f(r['decode_tok_s'])} | {_f(r['e2e_tok_s'])} | {x} |")
        lines += [
            "",
            "Decode tok/s counts the steps in which every row decodes (host time and sampling "
            "included); end to end is the whole batch, prefill included, from submit to the last "
            "token. Base alone ran before any adapter was registered (plain modules); the adapter "
            "rows each ran beside a base run of the same engine ('paired' in the JSON).",
        ]
    sv = res.get("serving", {})
    if sv:
        idle = sv.get("idle_ttft", {})
        lines += [
            "",
            "## Serving: Poisson arrivals (prompts 32-2,048, outputs 16-512 tokens, Zipf adapters)",
            "",
            f"Idle single requests (first {idle.get('n')} prompts, one at a time): TTFT p50 "
            f"{_f(idle.get('p50_ms'))} ms, p99 {_f(idle.get('p99_ms'))} ms.",
            "",
            "| run | req/s offered | req/s done | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | "
            "e2e p50 / p99 ms | failed | rows max | KV blocks peak | preempted |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, r in sv.items():
            if not isinstance(r, dict) or "ttft_ms" not in r:
                continue
            offered = "all at once" if r["rate_rps"] is None else f"{r['rate_rps']:.1f}"
            lines.append(
                f"| {key} | {offered} | {r['request_rate_rps']:.1f} | {_f(r['output_tok_s'])} | "
                f"{_f(r['ttft_ms']['p50'])} / {_f(r['ttft_ms']['p99'])} | "
                f"{_f(r['tpot_ms']['p50'], 1)} / {_f(r['tpot_ms']['p99'], 1)} | "
                f"{_f(r['e2e_ms']['p50'])} / {_f(r['e2e_ms']['p99'])} | {r['failed']} | "
                f"{r['max_rows']} | {r['kv_blocks_peak']} / {r['kv_blocks']} | {r['preemptions']} |"
            )
        hs = hf.get("serving")
        ours = sv.get("ours_on_hf_prompts")
        if hs and ours:
            lines += [
                "",
                f"The first {hs['requests']} serving prompts through transformers' static-cache "
                f"compiled `generate` in batches of 32 (left-padded to {hs['padded_prompt']} tokens, "
                f"{hs['new_tokens']} new tokens each row, the tokens asked for counted): "
                f"{_f(hs['asked_tok_s'])} tok/s ({hs['seconds']:.1f} s); ours on the same "
                f"{hs['requests']} requests at once: {_f(ours['output_tok_s'])} tok/s "
                f"({ours['duration_s']:.1f} s).",
            ]
    mem = res.get("memory")
    if mem:
        new = mem["new_tokens"]
        lines += [
            "",
            "## Memory",
            "",
            f"{mem['requests']} sequences of {mem['context_tokens']} tokens of context (prompt "
            f"{mem['context_tokens'] - new} + {new} new), 64 adapters: {mem['max_rows']} rows decoded "
            f"at once, {mem['completed']} completed, {mem['preemptions']} preempted; KV cache "
            f"{mem['kv_cache_gib']:.1f} GiB ({mem['kv_blocks_peak']} of {mem['kv_blocks']} blocks at "
            f"the peak), slot stack {mem['slot_stack_gib']:.1f} GiB ({mem['resident_adapters']} "
            f"resident); peak allocated {mem['peak_allocated_gib']:.1f} GiB of "
            f"{mem['device_total_gib']:.0f} GiB; {mem['output_tok_s']:,.0f} out tok/s.",
        ]
    notes = res.get("notes")
    if notes:
        lines += ["", "## Reading", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"
