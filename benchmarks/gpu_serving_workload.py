"""The serving workload of bench_gpu_serving, in the shape of vLLM's ``benchmark_serving``:
requests with prompt and output lengths drawn log-uniformly (seeded), adapters drawn with
Zipf popularity, sent to the engine as a Poisson process at a given rate (or all at once),
and the per-request timings they come back with."""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Request:
    prompt: list[int]
    adapter: str | None
    new_tokens: int


def workload(
    n: int, *, adapters: list[str | None], seed: int, prompt=(32, 2048), output=(16, 512),
    zipf: float = 1.0,
) -> list[Request]:  # fmt: skip
    """``n`` requests: prompt and output lengths log-uniform in the given ranges, random
    token ids, an adapter of ``adapters`` with probability proportional to ``1 / rank**zipf``
    (``[None]``: the base model)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    weights = [1 / (k + 1) ** zipf for k in range(len(adapters))]

    def loguniform(lo: int, hi: int) -> int:
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    out = []
    for _ in range(n):
        p, o = loguniform(*prompt), loguniform(*output)
        ids = torch.randint(1000, 128000, (p,), generator=gen).tolist()
        out.append(Request(ids, rng.choices(adapters, weights)[0], o))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def serve(engine, requests: list[Request], rate: float | None, *, seed: int = 0,
          timeout: float = 600) -> dict:  # fmt: skip
    """Send ``requests`` at Poisson arrivals of ``rate`` per second (``None``: all at once)
    and time them: TTFT (submit to the first chosen token), time per output token after
    the first, end to end; throughput over the whole run; KV blocks and preemptions."""
    from loraroute.agents.runtime.requests import SamplingParams

    sched = engine.scheduler
    paged = sched.paged
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in requests:
        arrivals.append(t)
        if rate is not None:
            t += rng.expovariate(rate)
    before = paged.stats() if paged is not None else {}
    if paged is not None:
        paged.alloc.peak_used = paged.alloc.used_blocks
    sched.max_rows_seen = 0
    records, failed = [], []
    start = time.perf_counter()
    for req, at in zip(requests, arrivals, strict=True):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rec: dict = {"submit": time.perf_counter(), "n": req.new_tokens, "p": len(req.prompt)}
        try:
            h = engine._submit_ids(
                req.prompt, req.adapter, SamplingParams(max_new_tokens=req.new_tokens)
            )
        except Exception as exc:  # noqa: BLE001 - a refused request is a failed one
            failed.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        rec["handle"] = h
        h._on_finish = lambda _h, rec=rec: rec.__setitem__("finish", time.perf_counter())
        if h.done() and "finish" not in rec:
            rec["finish"] = time.perf_counter()
        records.append(rec)
    ttft, tpot, e2e = [], [], []
    tokens = 0
    for rec in records:
        try:
            g = rec["handle"].result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        first = rec["handle"].first_token_at
        finish = rec.get("finish", time.perf_counter())
        tokens += g.completion_tokens
        ttft.append(first - rec["submit"])
        e2e.append(finish - rec["submit"])
        if g.completion_tokens > 1:
            tpot.append((finish - first) / (g.completion_tokens - 1))
    end = max((r.get("finish", start) for r in records), default=start)
    duration = end - start
    after = paged.stats() if paged is not None else {}
    ms = lambda xs, q: pct(xs, q) * 1e3  # noqa: E731
    return {
        "rate_rps": rate,
        "requests": len(requests),
        "completed": len(ttft),
        "failed": len(failed),
        "failures": failed[:5],
        "duration_s": duration,
        "request_rate_rps": len(ttft) / duration if duration else float("nan"),
        "output_tok_s": tokens / duration if duration else float("nan"),
        "total_tok_s": (tokens + sum(r["p"] for r in records)) / duration if duration else 0.0,
        "ttft_ms": {
            "p50": ms(ttft, 50),
            "p99": ms(ttft, 99),
            "mean": statistics.fmean(ttft) * 1e3 if ttft else None,
        },
        "tpot_ms": {"p50": ms(tpot, 50), "p99": ms(tpot, 99)},
        "e2e_ms": {"p50": ms(e2e, 50), "p99": ms(e2e, 99)},
        "max_rows": sched.max_rows_seen,
        "kv_blocks_peak": after.get("peak_used_blocks"),
        "kv_blocks": after.get("blocks"),
        "preemptions": after.get("preemptions", 0) - before.get("preemptions", 0),
        "prefix_hit_blocks": after.get("prefix_hits", 0) - before.get("prefix_hits", 0),
        **{
            k: after.get(k, 0) - before.get(k, 0)
            for k in ("graph_captures", "graph_replays", "graph_failures")
        },
    }


def idle_ttft(engine, requests: list[Request]) -> dict:
    """Each request alone on the idle engine (one new token): its TTFT."""
    from loraroute.agents.runtime.requests import SamplingParams

    times = []
    for req in requests:
        t = time.perf_counter()
        h = engine._submit_ids(req.prompt, req.adapter, SamplingParams(max_new_tokens=1))
        h.result(timeout=120)
        times.append(h.first_token_at - t)
    return {
        "n": len(times),
        "p50_ms": pct(times, 50) * 1e3,
        "p99_ms": pct(times, 99) * 1e3,
        "max_ms": max(times) * 1e3,
        "times_ms": [round(t * 1e3, 2) for t in times],
        "prompt_tokens": [len(r.prompt) for r in requests],
    }
