"""What the GPU serving benchmark measures our engine against, on the machine it runs on.

- :func:`floors`: the decode step's two floors at ``rows`` rows, measured here: the step's
  GEMMs alone (every projection and ``lm_head`` on random activations, recorded as one CUDA
  graph), and the step's weight bytes read at the bandwidth of a plain reduction;
- :func:`hf_static_generate`: transformers' ``generate`` with a static KV cache, which
  transformers compiles (``torch.compile``) for its decode steps on CUDA.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _events_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def step_weights(model) -> tuple[list[list[torch.Tensor]], torch.Tensor, int]:
    """Per layer the weights its decode step multiplies by (q/k/v and gate/up each as one
    tensor when they are rows of one: the engine fuses them), ``lm_head``'s, and the bytes
    of every weight a step reads (the norms included, the embedding table excluded: a step
    reads one row of it per token)."""
    from loraroute.agents.lora.fuse import rows_view

    layers = []
    nbytes = 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp

        def w(m):
            return getattr(m, "base", m).weight

        qkv = rows_view([w(attn.q_proj), w(attn.k_proj), w(attn.v_proj)])
        gu = rows_view([w(mlp.gate_proj), w(mlp.up_proj)])
        mats = [
            *([qkv] if qkv is not None else [w(attn.q_proj), w(attn.k_proj), w(attn.v_proj)]),
            w(attn.o_proj),
            *([gu] if gu is not None else [w(mlp.gate_proj), w(mlp.up_proj)]),
            w(mlp.down_proj),
        ]
        layers.append(mats)
        nbytes += sum(m.numel() * m.element_size() for m in mats)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            nbytes += norm.weight.numel() * norm.weight.element_size()
    head = model.lm_head.weight
    nbytes += head.numel() * head.element_size()
    nbytes += model.model.norm.weight.numel() * model.model.norm.weight.element_size()
    return layers, head, nbytes


def floors(model, rows: int = 32, reps: int = 20) -> dict:
    """The two floors of a decode step at ``rows`` rows (see the module docstring)."""
    layers, head, nbytes = step_weights(model)
    dtype, dev = head.dtype, head.device
    inputs = {}
    for mats in layers:
        for m in mats:
            inputs.setdefault(m.shape[1], torch.randn(rows, m.shape[1], dtype=dtype, device=dev))
    x_head = torch.randn(rows, head.shape[1], dtype=dtype, device=dev)

    def gemms():
        for mats in layers:
            for m in mats:
                torch.mm(inputs[m.shape[1]], m.t())
        torch.mm(x_head, head.t())

    gemms()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemms()
    for _ in range(3):
        graph.replay()
    gemm_ms = _events_ms(graph.replay, reps)
    # a plain reduction over a buffer of several GB: the bandwidth a step's reads can have
    buf = torch.ones(4 * 2**30 // 2, dtype=torch.bfloat16, device=dev)
    for _ in range(2):
        buf.sum(dtype=torch.float32)
    read_ms = _events_ms(lambda: buf.sum(dtype=torch.float32), 10)
    bandwidth = buf.numel() * buf.element_size() / (read_ms / 1e3)
    buf = graph = None
    torch.cuda.empty_cache()
    read_floor_ms = nbytes / bandwidth * 1e3
    return {
        "rows": rows,
        "weight_bytes": nbytes,
        "gemm_step_ms": gemm_ms,
        "gemm_floor_tok_s": rows / gemm_ms * 1e3,
        "gemm_bandwidth_tb_s": nbytes / (gemm_ms / 1e3) / 1e12,
        "reduction_bandwidth_tb_s": bandwidth / 1e12,
        "read_floor_step_ms": read_floor_ms,
        "read_floor_tok_s": rows / read_floor_ms * 1e3,
    }


def hf_static_generate(model, batches: list[torch.Tensor], new_tokens: int, *,
                       masks: list[torch.Tensor] | None = None) -> dict:  # fmt: skip
    """transformers' ``generate`` over ``batches`` (``[rows, prompt]`` each, all one shape),
    static cache, greedy, exactly ``new_tokens`` each; the first batch runs twice untimed
    (compilation). Returns times and the decode rate ((time of all tokens - time of the
    first) over the tokens after the first)."""

    def gen(ids, mask, n):
        sync()
        t = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            cache_implementation="static",
        )
        sync()
        return time.perf_counter() - t

    masks = masks or [torch.ones_like(b) for b in batches]
    t0 = time.perf_counter()
    for _ in range(2):
        gen(batches[0], masks[0], new_tokens)
    warm = time.perf_counter() - t0
    compiled = getattr(model, "_compiled_call", None) is not None
    first = sum(gen(b, m, 1) for b, m in zip(batches, masks, strict=True))
    full = sum(gen(b, m, new_tokens) for b, m in zip(batches, masks, strict=True))
    rows = sum(b.shape[0] for b in batches)
    return {
        "compiled": compiled,
        "warmup_seconds": warm,
        "seconds": full,
        "prefill_seconds": first,
        "e2e_tok_s": rows * new_tokens / full,
        "decode_tok_s": rows * (new_tokens - 1) / max(full - first, 1e-9),
        "new_tokens": new_tokens,
        "rows": rows,
    }


def drop_compiled(model: Any) -> None:
    """Free what ``generate``'s compilation holds (its graphs and their static cache)."""
    import gc

    if hasattr(model, "_compiled_call"):
        del model._compiled_call
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
