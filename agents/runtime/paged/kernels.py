"""Triton kernels of the paged model step: what surrounds the GEMMs, fused.

Each kernel reproduces the rounding of the ``transformers`` code it replaces (every value that
code rounds to the model's dtype is rounded here too), so the GPU path stays within bf16 noise
of the model's own forward:

- :func:`_add_rmsnorm_kernel`: ``residual += x`` then RMSNorm, one row a program (Llama's
  ``residual + hidden`` and ``LlamaRMSNorm``);
- :func:`_rope_store_kernel`: rotary embedding of ``q`` and ``k``, and ``k``/``v`` written into
  their paged cache slots, one token a program;
- :func:`_silu_mul_kernel`: ``silu(gate) * up`` (Llama's MLP activation);
- :func:`_paged_attention_kernel`: causal attention of a ragged batch (prefill chunks and decode
  tokens together) over the paged cache, one block of query tokens of one sequence and one KV
  head a program; the query heads that share the KV head are rows of the same tile, so each key
  is read once for all of them. Online softmax in fp32.

The first three can also add a LoRA delta onto their input (what a graphed decode step's LoRA
computed beside the GEMM that made it), rounded as the add they replace would have.

``triton`` is ``None`` without Triton; :mod:`.ops` then runs the PyTorch forms.
"""

from __future__ import annotations

from ...lora._triton import tl, triton

if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(
        x_ptr, stride_x, res_ptr, stride_r, res_out_ptr, out_ptr, w_ptr, eps, N, d_ptr,
        stride_d, HAS_RES: tl.constexpr, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """``res_out = x + res`` (rounded), ``out = w * rmsnorm(res_out)``; without
        ``HAS_RES`` the row itself is normalised (and ``res_out`` not written). ``HAS_DELTA``:
        ``x`` is first ``x + delta`` (rounded: a LoRA delta the add of its own would have
        added; needs ``HAS_RES``)."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        dtype = out_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * stride_d + cols, mask=ok, other=0.0).to(tl.float32)
            x = (x + d).to(dtype).to(tl.float32)
        if HAS_RES:
            r = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
            x = (x + r).to(dtype).to(tl.float32)
            tl.store(res_out_ptr + row * N + cols, x.to(dtype), mask=ok)
        var = tl.sum(x * x, axis=0) / N
        y = (x * tl.rsqrt(var + eps)).to(dtype).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * N + cols, (w * y).to(dtype), mask=ok)

    @triton.jit
    def _rotate(base, d_base, heads, j, ok, c1, c2, s1, s2, HALF: tl.constexpr,
                HAS_DELTA: tl.constexpr):  # fmt: skip
        """``x * cos + rotate_half(x) * sin`` for ``[heads, 2 * HALF]`` rows at ``base``,
        each product rounded to the dtype first, as transformers' bf16 code does
        (``HAS_DELTA``: ``x`` is ``x + delta``, rounded, the delta's rows at ``d_base``)."""
        dtype = base.dtype.element_ty
        x1 = tl.load(base + heads + j, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(base + heads + HALF + j, mask=ok, other=0.0).to(tl.float32)
        if HAS_DELTA:
            d1 = tl.load(d_base + heads + j, mask=ok, other=0.0).to(tl.float32)
            d2 = tl.load(d_base + heads + HALF + j, mask=ok, other=0.0).to(tl.float32)
            x1 = (x1 + d1).to(dtype).to(tl.float32)
            x2 = (x2 + d2).to(dtype).to(tl.float32)
        o1 = (x1 * c1).to(dtype).to(tl.float32) - (x2 * s1).to(dtype).to(tl.float32)
        o2 = (x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)
        return o1, o2

    @triton.jit
    def _rope_store_kernel(
        q_ptr, stride_q, k_ptr, stride_k, v_ptr, stride_v, q_out_ptr, kc_ptr, vc_ptr,
        cos_ptr, sin_ptr, pos_ptr, slot_ptr, dq_ptr, dk_ptr, dv_ptr, stride_d,
        H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
        HALF_PAD: tl.constexpr, H_PAD: tl.constexpr, KV_PAD: tl.constexpr, D_PAD: tl.constexpr,
        HAS_DELTA: tl.constexpr,
    ):  # fmt: skip
        """Token ``t``: rotated ``q`` into ``q_out[t]`` (``[H, D]``), rotated ``k`` and plain
        ``v`` into cache slot ``slot[t]`` (``[KV, D]`` each); cos/sin rows by position.
        ``HAS_DELTA``: ``q``, ``k``, ``v`` are first added their LoRA deltas (``dq``, ``dk``,
        ``dv``, rows ``stride_d`` apart), rounded, as an add of its own would have."""
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        dtype = q_out_ptr.dtype.element_ty
        j = tl.arange(0, HALF_PAD)
        jok = j < HALF
        c1 = tl.load(cos_ptr + pos * D + j, mask=jok, other=0.0).to(tl.float32)[None, :]
        c2 = tl.load(cos_ptr + pos * D + HALF + j, mask=jok, other=0.0).to(tl.float32)[None, :]
        s1 = tl.load(sin_ptr + pos * D + j, mask=jok, other=0.0).to(tl.float32)[None, :]
        s2 = tl.load(sin_ptr + pos * D + HALF + j, mask=jok, other=0.0).to(tl.float32)[None, :]
        h = tl.arange(0, H_PAD)
        qok = (h < H)[:, None] & jok[None, :]
        o1, o2 = _rotate(q_ptr + t * stride_q, dq_ptr + t * stride_d, h[:, None] * D,
                         j[None, :], qok, c1, c2, s1, s2, HALF, HAS_DELTA)  # fmt: skip
        dst = q_out_ptr + t * (H * D) + h[:, None] * D + j[None, :]
        tl.store(dst, o1.to(dtype), mask=qok)
        tl.store(dst + HALF, o2.to(dtype), mask=qok)
        g = tl.arange(0, KV_PAD)
        kok = (g < KV)[:, None] & jok[None, :]
        k1, k2 = _rotate(k_ptr + t * stride_k, dk_ptr + t * stride_d, g[:, None] * D,
                         j[None, :], kok, c1, c2, s1, s2, HALF, HAS_DELTA)  # fmt: skip
        kdst = kc_ptr + slot * (KV * D) + g[:, None] * D + j[None, :]
        tl.store(kdst, k1.to(dtype), mask=kok)
        tl.store(kdst + HALF, k2.to(dtype), mask=kok)
        d = tl.arange(0, D_PAD)
        vok = (g < KV)[:, None] & (d < D)[None, :]
        v = tl.load(v_ptr + t * stride_v + g[:, None] * D + d[None, :], mask=vok, other=0.0)
        if HAS_DELTA:
            dv = tl.load(dv_ptr + t * stride_d + g[:, None] * D + d[None, :], mask=vok, other=0.0)
            v = (v.to(tl.float32) + dv.to(tl.float32)).to(dtype)
        tl.store(vc_ptr + slot * (KV * D) + g[:, None] * D + d[None, :], v, mask=vok)

    @triton.jit
    def _silu_mul_kernel(
        g_ptr, stride_g, u_ptr, stride_u, out_ptr, N, dg_ptr, du_ptr, stride_d,
        BLOCK: tl.constexpr, HAS_DELTA: tl.constexpr,
    ):  # fmt: skip
        """``out[row] = silu(gate[row]) * up[row]``, the silu rounded first (as torch's);
        ``HAS_DELTA``: gate and up are first added their LoRA deltas, rounded."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < N
        dtype = out_ptr.dtype.element_ty
        g = tl.load(g_ptr + row * stride_g + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * stride_u + cols, mask=ok, other=0.0).to(tl.float32)
        if HAS_DELTA:
            dg = tl.load(dg_ptr + row * stride_d + cols, mask=ok, other=0.0).to(tl.float32)
            du = tl.load(du_ptr + row * stride_d + cols, mask=ok, other=0.0).to(tl.float32)
            g = (g + dg).to(dtype).to(tl.float32)
            u = (u + du).to(dtype).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * N + cols, (s * u).to(dtype), mask=ok)

    @triton.jit(do_not_specialize=["bt_stride"])
    def _paged_attention_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, bt_ptr, bt_stride, qb_seq_ptr, qb_start_ptr, qb_len_ptr,
        pos_ptr, qk_scale,
        H: tl.constexpr, KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
        D_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
    ):  # fmt: skip
        """Program ``(p, kv)``: the ``qb_len[p]`` query tokens from flat index
        ``qb_start[p]`` (one sequence, ``qb_seq[p]``) times the ``G`` query heads of KV head
        ``kv``, against keys ``0..pos`` of that sequence through its block table
        (``qk_scale`` includes log2(e): the softmax runs in base 2)."""
        p = tl.program_id(0)
        kvh = tl.program_id(1)
        seq = tl.load(qb_seq_ptr + p).to(tl.int64)
        start = tl.load(qb_start_ptr + p).to(tl.int64)
        qlen = tl.load(qb_len_ptr + p)
        m = tl.arange(0, BLOCK_M)
        tok = m // G
        row_ok = (tok < qlen) & (m < BLOCK_Q * G)
        head = kvh * G + m % G
        t_idx = start + tok
        d = tl.arange(0, D_PAD)
        d_ok = d < D
        q_rows = t_idx[:, None] * (H * D) + head[:, None] * D + d[None, :]
        q = tl.load(q_ptr + q_rows, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        qpos = tl.load(pos_ptr + t_idx, mask=row_ok, other=-1)
        last = tl.load(pos_ptr + start + tl.maximum(qlen - 1, 0))
        ctx = tl.where(qlen > 0, last + 1, 0)
        m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)
        table = bt_ptr + seq * bt_stride
        offs_n = tl.arange(0, BLOCK_N)
        for n0 in range(0, ctx, BLOCK_N):
            n = n0 + offs_n
            n_ok = n < ctx
            blk = tl.load(table + n // PAGE, mask=n_ok, other=0).to(tl.int64)
            kv_rows = (blk * PAGE + n % PAGE) * (KV * D) + kvh * D
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + kv_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            seen = (n[None, :] <= qpos[:, None]) & n_ok[None, :]
            s = tl.where(seen, s, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            pr = tl.exp2(s - m_new[:, None])
            pr = tl.where(seen, pr, 0.0)
            v = tl.load(v_ptr + kv_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(pr, 1)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        # a padding row of a graph (no tokens) gets zeros for its own token's heads
        empty = (tl.zeros((BLOCK_M,), dtype=tl.int32) + qlen) == 0
        store = row_ok | (empty & (m < G))
        tl.store(
            o_ptr + q_rows, out.to(o_ptr.dtype.element_ty), mask=store[:, None] & d_ok[None, :]
        )


else:  # pragma: no cover - depends on the machine
    _add_rmsnorm_kernel = _rope_store_kernel = _silu_mul_kernel = None
    _paged_attention_kernel = None
