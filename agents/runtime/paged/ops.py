"""The operations of a paged model step, each in Triton (:mod:`.kernels`, on CUDA) or in
PyTorch (any device; the same formulas as ``transformers``' Llama code).

:class:`StepMeta` describes one step's ragged batch: for every sequence in it, the tokens it
feeds (a prefill chunk or one decode token), where their keys go and which cached keys they
see. Tokens are flat (``[tokens, ...]``): sequence ``i`` owns tokens
``starts[i] .. starts[i] + lens[i]`` at positions ``ctx[i] - lens[i] .. ctx[i] - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ...lora._triton import IMPORT_ERROR
from . import kernels as K

LOG2E = 1.4426950408889634


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass
class StepMeta:
    """One step's ragged batch (see the module docstring); device tensors unless noted."""

    positions: torch.Tensor  # [tokens] long
    slot_mapping: torch.Tensor  # [tokens] long: the cache slot each token's keys go to
    block_tables: torch.Tensor  # [table rows, max blocks] int32, every sequence's table
    # query blocks of the Triton attention: table row, first token, tokens (<= block_q)
    qb_seq: torch.Tensor
    qb_start: torch.Tensor
    qb_len: torch.Tensor
    block_q: int
    block_m: int
    # host side, for the PyTorch attention: per sequence its first token, tokens fed,
    # context after the step and table row
    starts: list[int] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    _torch: Any = None  # gather indices, made once per step


def attention_blocks(groups: int, *, decode: bool) -> tuple[int, int]:
    """``(block_q, block_m)``: query tokens per attention program and the tile rows they
    make with their ``groups`` query heads per KV head (16 rows at least for ``tl.dot``)."""
    want = 16 if decode else 64
    block_m = max(16, _pow2(groups), want)
    return max(1, block_m // groups), block_m


def slot_mapping(
    tables: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, block_size: int
) -> torch.Tensor:
    """The cache slot of each token: ``tables[row, pos // block_size] * block_size + pos %
    block_size`` (on the device; a replayed graph computes it too)."""
    blocks = tables[rows, torch.div(positions, block_size, rounding_mode="floor")]
    return blocks.long() * block_size + positions % block_size


def build_meta(
    seqs: list[tuple[int, int, int]],
    tables: torch.Tensor,
    block_size: int,
    groups: int,
    device: torch.device,
) -> StepMeta:
    """The step's :class:`StepMeta` from ``(tokens fed, context after the step, table row)``
    per sequence, in token order; ``tables`` holds every sequence's block table."""
    decode = all(n == 1 for n, _, _ in seqs)
    block_q, block_m = attention_blocks(groups, decode=decode)
    positions: list[int] = []
    token_rows: list[int] = []
    qb_seq: list[int] = []
    qb_start: list[int] = []
    qb_len: list[int] = []
    starts, lens, ctxs, rows = [], [], [], []
    start = 0
    for n, ctx, row in seqs:
        positions.extend(range(ctx - n, ctx))
        token_rows.extend([row] * n)
        for q0 in range(0, n, block_q):
            qb_seq.append(row)
            qb_start.append(start + q0)
            qb_len.append(min(block_q, n - q0))
        starts.append(start)
        lens.append(n)
        ctxs.append(ctx)
        rows.append(row)
        start += n
    host = torch.tensor(positions + token_rows + qb_seq + qb_start + qb_len, dtype=torch.long)
    if device.type == "cuda":
        host = host.pin_memory()
    host = host.to(device, non_blocking=True)
    t, p = len(positions), len(qb_seq)
    pos = host[:t]
    return StepMeta(
        positions=pos,
        slot_mapping=slot_mapping(tables, host[t : 2 * t], pos, block_size),
        block_tables=tables,
        qb_seq=host[2 * t : 2 * t + p],
        qb_start=host[2 * t + p : 2 * t + 2 * p],
        qb_len=host[2 * t + 2 * p :],
        block_q=block_q,
        block_m=block_m,
        starts=starts,
        lens=lens,
        ctx=ctxs,
        rows=rows,
    )


class Ops:
    """The step's operations on one device: Triton kernels when ``triton`` (CUDA, or the
    interpreter in tests), else PyTorch."""

    def __init__(self, *, triton: bool, block_size: int):
        if triton and K.triton is None:
            raise RuntimeError(f"the paged Triton kernels need triton ({IMPORT_ERROR})")
        self.triton = triton
        self.block_size = block_size
        self.launches = 0  # Triton kernel launches (tests check the kernels ran)

    # -- norms and activations -------------------------------------------------------------
    def add_rmsnorm(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
        delta: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rmsnorm(x + residual) * weight, x + residual)``; ``residual`` ``None``: x alone.
        ``delta`` (a LoRA delta of the product ``x``) is added onto ``x`` first."""
        if delta is not None and residual is None:  # x + delta, rounded once, is the sum
            residual, delta = delta, None
        if not self.triton:
            if delta is not None:
                x = x + delta
            res = x if residual is None else x + residual
            h = res.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            return weight * h.to(res.dtype), res
        rows, n = x.shape
        out = torch.empty_like(x)
        res_out = x if residual is None else torch.empty_like(x)
        res = x if residual is None else residual
        d = x if delta is None else delta
        K._add_rmsnorm_kernel[(rows,)](
            x, x.stride(0), res, res.stride(0), res_out, out, weight, eps, n, d, d.stride(0),
            HAS_RES=residual is not None, HAS_DELTA=delta is not None, BLOCK=_pow2(n),
            num_warps=8 if n >= 2048 else 4,
        )  # fmt: skip
        self.launches += 1
        return out, res_out

    def silu_mul(
        self,
        gate: torch.Tensor,
        up: torch.Tensor,
        deltas: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> torch.Tensor:
        """``silu(gate) * up``; ``deltas``: LoRA deltas of gate and up, added first."""
        gate, up, dg, du = _with_deltas((gate, up), deltas, fused=self.triton)
        if not self.triton:
            return F.silu(gate) * up
        rows, n = gate.shape
        out = torch.empty(rows, n, dtype=gate.dtype, device=gate.device)
        block = 1024
        dg_, du_ = (gate, up) if dg is None else (dg, du)
        K._silu_mul_kernel[(rows, triton_cdiv(n, block))](
            gate, gate.stride(0), up, up.stride(0), out, n, dg_, du_, dg_.stride(0),
            BLOCK=block, HAS_DELTA=dg is not None, num_warps=4,
        )  # fmt: skip
        self.launches += 1
        return out

    # -- rotary embedding and the cache writes ---------------------------------------------
    def rope_store(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: StepMeta,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        deltas: tuple[torch.Tensor | None, ...] = (None, None, None),
    ) -> torch.Tensor:
        """Rotated queries ``[tokens, heads, dim]``; rotated keys and the values go into
        their slots of ``k_cache``/``v_cache`` (``[slots, kv_heads, dim]``). ``deltas``:
        LoRA deltas of q, k and v, added first."""
        q, k, v, dq, dk, dv = _with_deltas((q, k, v), deltas, fused=self.triton)
        tokens = q.shape[0]
        kv, dim = k_cache.shape[1], k_cache.shape[2]
        heads = q.shape[1] // dim
        if not self.triton:
            c = cos.index_select(0, meta.positions)[:, None, :]
            s = sin.index_select(0, meta.positions)[:, None, :]
            qh = q.reshape(tokens, heads, dim)
            kh = k.reshape(tokens, kv, dim)
            q_rot = qh * c + _rotate_half(qh) * s
            k_rot = kh * c + _rotate_half(kh) * s
            k_cache.index_copy_(0, meta.slot_mapping, k_rot)
            v_cache.index_copy_(0, meta.slot_mapping, v.reshape(tokens, kv, dim))
            return q_rot
        q_out = torch.empty(tokens, heads, dim, dtype=q.dtype, device=q.device)
        half = dim // 2
        dq_, dk_, dv_ = (q, k, v) if dq is None else (dq, dk, dv)
        K._rope_store_kernel[(tokens,)](
            q, q.stride(0), k, k.stride(0), v, v.stride(0), q_out, k_cache, v_cache, cos, sin,
            meta.positions, meta.slot_mapping, dq_, dk_, dv_, dq_.stride(0), H=heads, KV=kv,
            D=dim, HALF=half, HALF_PAD=_pow2(half), H_PAD=_pow2(heads), KV_PAD=_pow2(kv),
            D_PAD=_pow2(dim), HAS_DELTA=dq is not None, num_warps=4,
        )  # fmt: skip
        self.launches += 1
        return q_out

    # -- attention ---------------------------------------------------------------------------
    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: StepMeta,
        scale: float,
    ) -> torch.Tensor:
        """Causal attention of every token over its sequence's cached keys (its own
        included): ``[tokens, heads * dim]`` from ``q`` ``[tokens, heads, dim]``."""
        tokens, heads, dim = q.shape
        kv = k_cache.shape[1]
        if not self.triton:
            return self._attention_torch(q, k_cache, v_cache, meta, scale)
        out = torch.empty_like(q)
        programs = meta.qb_seq.shape[0]
        K._paged_attention_kernel[(programs, kv)](
            q, k_cache, v_cache, out, meta.block_tables, meta.block_tables.stride(0),
            meta.qb_seq, meta.qb_start, meta.qb_len, meta.positions, scale * LOG2E,
            H=heads, KV=kv, G=heads // kv, D=dim, D_PAD=max(16, _pow2(dim)),
            BLOCK_Q=meta.block_q, BLOCK_M=meta.block_m, BLOCK_N=64 if dim <= 128 else 32,
            PAGE=self.block_size, num_warps=4,
        )  # fmt: skip
        self.launches += 1
        return out.view(tokens, heads * dim)

    def _attention_torch(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: StepMeta,
        scale: float,
    ) -> torch.Tensor:
        tokens, heads, dim = q.shape
        kv = k_cache.shape[1]
        groups = heads // kv
        gather = meta._torch
        if gather is None:
            gather = meta._torch = _torch_gather(meta, self.block_size, q.device)
        out = torch.zeros(tokens, heads * dim, dtype=q.dtype, device=q.device)
        decode_rows, idx, mask, rest = gather
        if decode_rows is not None:
            b, width = idx.shape
            keys = k_cache.index_select(0, idx.view(-1)).view(b, width, kv, dim).transpose(1, 2)
            vals = v_cache.index_select(0, idx.view(-1)).view(b, width, kv, dim).transpose(1, 2)
            qd = q.index_select(0, decode_rows).view(b, kv, groups, dim)
            o = F.scaled_dot_product_attention(qd, keys, vals, attn_mask=mask, scale=scale)
            out.index_copy_(0, decode_rows, o.reshape(b, heads * dim))
        for start, n, slots, causal in rest:
            keys = k_cache.index_select(0, slots).transpose(0, 1)  # [kv, ctx, dim]
            vals = v_cache.index_select(0, slots).transpose(0, 1)
            qs = q[start : start + n].view(n, kv, groups, dim).permute(1, 2, 0, 3)
            qs = qs.reshape(kv, groups * n, dim)
            mask_g = causal.repeat(groups, 1)  # rows: head of the group, then token
            o = F.scaled_dot_product_attention(qs, keys, vals, attn_mask=mask_g, scale=scale)
            out[start : start + n] = (
                o.view(kv, groups, n, dim).permute(2, 0, 1, 3).reshape(n, heads * dim)
            )
        return out


def _with_deltas(
    inputs: tuple[torch.Tensor, ...], deltas: tuple[torch.Tensor | None, ...], *, fused: bool
) -> tuple:
    """``(*inputs, *deltas)`` as an op takes them: the Triton kernels (``fused``) read the
    deltas themselves when there is one for every input, all with one row stride (column
    views of one delta buffer); otherwise they are added here and returned as ``None``."""
    if all(d is None for d in deltas):
        return (*inputs, *deltas)
    strides = {None if d is None else (d.stride(0), d.stride(1)) for d in deltas}
    if fused and len(strides) == 1 and next(iter(strides))[1] == 1:  # type: ignore[index]
        return (*inputs, *deltas)
    summed = tuple(x if d is None else x + d for x, d in zip(inputs, deltas, strict=True))
    return (*summed, *(None for _ in deltas))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _torch_gather(meta: StepMeta, block_size: int, device: torch.device) -> tuple:
    """Gather indices of the PyTorch attention: the one-token rows batched (slots ``[rows,
    longest context]``, padded with slot 0 and masked), longer chunks one by one."""
    tables = meta.block_tables.long()
    single = [i for i, n in enumerate(meta.lens) if n == 1]
    decode_rows = idx = mask = None
    if single:
        width = max(meta.ctx[i] for i in single)
        pos = torch.arange(width, device=device)
        rows = torch.tensor([meta.rows[i] for i in single], device=device)
        ctx = torch.tensor([meta.ctx[i] for i in single], device=device)
        idx = tables.index_select(0, rows)[:, pos // block_size] * block_size + pos % block_size
        seen = pos[None, :] < ctx[:, None]
        idx = torch.where(seen, idx, 0)
        mask = seen[:, None, None, :]  # [rows, 1, 1, width]
        decode_rows = torch.tensor([meta.starts[i] for i in single], device=device)
    rest = []
    for i, n in enumerate(meta.lens):
        if n == 1:
            continue
        ctx_i = meta.ctx[i]
        pos = torch.arange(ctx_i, device=device)
        slots = tables[meta.rows[i], pos // block_size] * block_size + pos % block_size
        qpos = torch.arange(ctx_i - n, ctx_i, device=device)
        causal = pos[None, :] <= qpos[:, None]  # [n, ctx]
        rest.append((meta.starts[i], n, slots, causal))
    return decode_rows, idx, mask, rest


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["Ops", "StepMeta", "attention_blocks", "build_meta", "slot_mapping"]
