"""The mixed-adapter LoRA kernels in Triton; :mod:`.launchers` calls them.

Every kernel computes, for the tokens it is given, ``y[i] (+)= (x[i] @ A[s[i]]^T) @ B[s[i]]^T``
with ``s[i]`` the token's adapter slot (B pre-scaled; slot 0 means no adapter): the shrink
(``x @ A^T``, fp32 accumulation, rounded to the weight dtype as PEFT does) and the expand
(``t @ B^T``) of every module of a group (``q``/``k``/``v`` or ``gate``/``up``) read from one
slot stack. Three forms:

- :func:`_lora_group_kernel`: shrink and expand fused, tokens in tiles of ``BLOCK_M`` that share
  a slot, optional split-K with a fixed-order reduction (eager and prefill forwards);
- :func:`_lora_shrink_kernel` + :func:`_lora_expand_kernel`: the same on tiles, as two
  launches (decode steps replayed as CUDA graphs);
- :func:`_lora_shrink_rows_kernel` + :func:`_lora_expand_rows_kernel`: one row a program,
  each reading its own slot (graphed decode with many distinct adapters; Punica's BGMV).

:func:`_l2_prefetch_kernel` computes nothing: it hints the next groups' slot regions into L2
while a graphed decode step is still on the GEMM before them (``config.l2_prefetch``).

Slots may hold int8 values (``HAS_SCALE``): each module's ``r`` rank scales (at the table
row's ``s_off`` in the slot's scales) multiply the shrink's output before it is rounded, and
the values are converted to the input's dtype as they are loaded (:mod:`.layout`).

Everything is optional: ``triton`` is ``None`` without Triton, and the slot layers then use the
PyTorch gather + bmm path. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""

from __future__ import annotations

from ._triton import tl, triton

if triton is not None:

    @triton.jit
    def _expand(
        acc, base, b_off, col0, ncol, dcol, d_ptr, stride_dm, rows64, row_ok, offs_r,
        R: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr, ADD: tl.constexpr,
    ):  # fmt: skip
        """``delta[rows, chunk] = t @ B[chunk]^T`` with ``t`` rounded to the model's dtype
        (``ADD``: ``+=``, onto the base product already there)."""
        t = acc.to(d_ptr.dtype.element_ty)
        offs_n = tl.arange(0, BLOCK_N)
        for n0 in tl.static_range(0, CHUNK_N, BLOCK_N):
            cols = n0 + offs_n
            c_ok = cols < ncol
            mcols = col0 + cols
            bt = tl.load(
                base + b_off + mcols[:, None].to(tl.int64) * R + offs_r[None, :],
                mask=c_ok[:, None],
                other=0.0,
            )
            out = tl.dot(t, tl.trans(bt.to(t.dtype)))
            dst = d_ptr + rows64[:, None] * stride_dm + (dcol + mcols)[None, :]
            mask = row_ok[:, None] & c_ok[None, :]
            if ADD:
                out += tl.load(dst, mask=mask, other=0.0).to(tl.float32)
            tl.store(dst, out.to(d_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _shrink(x_ptr, stride_xm, a_ptr, rows64, row_ok, k_lo, k_hi, K, R: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """``x[rows, k_lo:k_hi] @ A[:, k_lo:k_hi]^T`` in fp32 (``A`` at ``a_ptr``, ``[R, K]``)."""
        offs_r = tl.arange(0, R)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            xt = tl.load(
                x_ptr + rows64[:, None] * stride_xm + kk[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            at = tl.load(a_ptr + offs_r[:, None] * K + kk[None, :], mask=k_ok[None, :], other=0.0)
            acc += tl.dot(xt, tl.trans(at.to(xt.dtype)))
        return acc

    @triton.jit
    def _rank_scales(acc, scale_ptr, scale_stride, slot, s_off, offs_r):
        """``acc`` (``[rows, R]``) times the slot's rank scales of one module (int8 slots)."""
        return acc * tl.load(scale_ptr + slot * scale_stride + s_off + offs_r)[None, :]

    @triton.jit(
        do_not_specialize=["stride_xm", "slot_stride", "stride_dm", "K", "k_per", "scale_stride"]
    )
    def _lora_group_kernel(
        x_ptr,
        stride_xm,
        w_ptr,
        slot_stride,
        d_ptr,
        stride_dm,
        tok_ptr,
        tile_slot_ptr,
        chunk_ptr,
        K,
        part_ptr,
        count_ptr,
        k_per,
        scale_ptr,
        scale_stride,
        R: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK_N: tl.constexpr,
        SPLIT: tl.constexpr,
        HAS_SCALE: tl.constexpr,
    ):
        tile = tl.program_id(0)
        chunk = tl.program_id(1)
        slot = tl.load(tile_slot_ptr + tile).to(tl.int64)
        offs_m = tl.arange(0, BLOCK_M)
        rows = tl.load(tok_ptr + tile * BLOCK_M + offs_m)
        row_ok = rows >= 0
        rows64 = tl.where(row_ok, rows, 0).to(tl.int64)
        crow = chunk_ptr + chunk * 7
        a_off = tl.load(crow).to(tl.int64)
        b_off = tl.load(crow + 1).to(tl.int64)
        col0 = tl.load(crow + 2)  # first column of the chunk inside its module
        ncol = tl.load(crow + 3)  # columns in this chunk
        dcol = tl.load(crow + 4)  # first column of the module inside the delta buffer
        # tiles fill from the front: a tile whose first token is -1 only pads the grid of a
        # CUDA graph made for more tiles (see lora.StaticPlanBuffers); it reads and writes
        # nothing (no shrink steps, no expand columns)
        live = tl.load(tok_ptr + tile * BLOCK_M) >= 0
        ncol = tl.where(live, ncol, 0)
        base = w_ptr + slot * slot_stride
        offs_r = tl.arange(0, R)
        k_lo = tl.program_id(2) * k_per  # this program's slice of the shrink (split-K)
        k_hi = tl.where(live, tl.minimum(k_lo + k_per, K), k_lo)
        acc = _shrink(x_ptr, stride_xm, base + a_off, rows64, row_ok, k_lo, k_hi, K, R,
                      BLOCK_M, BLOCK_K)  # fmt: skip
        if SPLIT == 1:
            if HAS_SCALE:
                s_off = tl.load(crow + 6).to(tl.int64)
                acc = _rank_scales(acc, scale_ptr, scale_stride, slot, s_off, offs_r)
            _expand(acc, base, b_off, col0, ncol, dcol, d_ptr, stride_dm, rows64, row_ok,
                    offs_r, R, BLOCK_N, CHUNK_N, False)  # fmt: skip
        else:
            # each slice stores its partial sum; the last slice of this (tile, chunk) to
            # finish adds them up in a fixed order (deterministic) and does the expand
            job = tile * tl.num_programs(1) + chunk
            tile_part = part_ptr + job.to(tl.int64) * (SPLIT * BLOCK_M * R)
            offs_t = offs_m[:, None] * R + offs_r[None, :]
            tl.store(tile_part + tl.program_id(2) * (BLOCK_M * R) + offs_t, acc)
            done = tl.atomic_add(count_ptr + job, 1, sem="acq_rel")
            if done == SPLIT - 1:
                tl.atomic_xchg(count_ptr + job, 0)  # ready for the next launch
                total = tl.zeros((BLOCK_M, R), dtype=tl.float32)
                for s in tl.static_range(SPLIT):
                    total += tl.load(tile_part + s * (BLOCK_M * R) + offs_t, cache_modifier=".cg")
                if HAS_SCALE:
                    s_off = tl.load(crow + 6).to(tl.int64)
                    total = _rank_scales(total, scale_ptr, scale_stride, slot, s_off, offs_r)
                _expand(total, base, b_off, col0, ncol, dcol, d_ptr, stride_dm, rows64,
                        row_ok, offs_r, R, BLOCK_N, CHUNK_N, False)  # fmt: skip

    @triton.jit
    def _lora_shrink_kernel(
        x_ptr, stride_xm, w_ptr, slot_stride, tok_ptr, tile_slot_ptr, a_off_ptr, part_ptr, K,
        k_per, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        ALIGN: tl.constexpr,
    ):  # fmt: skip
        """``part[tile, member, s] = x[tile, slice s] @ A[slot, member, :, slice s]^T`` (fp32;
        zeros for padding tiles and slot 0, which read nothing)."""
        tile = tl.program_id(0)
        member = tl.program_id(1)
        s = tl.program_id(2)
        split = tl.num_programs(2)
        slot = tl.load(tile_slot_ptr + tile).to(tl.int64)
        offs_m = tl.arange(0, BLOCK_M)
        rows = tl.load(tok_ptr + tile * BLOCK_M + offs_m)
        row_ok = rows >= 0
        rows64 = tl.where(row_ok, rows, 0).to(tl.int64)
        live = (tl.load(tok_ptr + tile * BLOCK_M) >= 0) & (slot != 0)
        a_off = tl.multiple_of(tl.load(a_off_ptr + member).to(tl.int64), ALIGN)
        base = w_ptr + slot * slot_stride + a_off
        offs_r = tl.arange(0, R)
        k_lo = s * k_per
        k_hi = tl.where(live, tl.minimum(k_lo + k_per, K), k_lo)
        acc = _shrink(x_ptr, stride_xm, base, rows64, row_ok, k_lo, k_hi, K, R, BLOCK_M, BLOCK_K)
        job = (tile * tl.num_programs(1) + member).to(tl.int64)
        dst = part_ptr + (job * split + s) * (BLOCK_M * R)
        tl.store(dst + offs_m[:, None] * R + offs_r[None, :], acc)

    @triton.jit(do_not_specialize=["members", "split", "scale_stride"])
    def _lora_expand_kernel(
        w_ptr, slot_stride, d_ptr, stride_dm, tok_ptr, tile_slot_ptr, block_ptr, part_ptr,
        members, split, scale_ptr, scale_stride, R: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr, ADD: tl.constexpr, ALIGN: tl.constexpr,
        HAS_SCALE: tl.constexpr,
    ):  # fmt: skip
        """``delta[tile, chunk] = (sum_s part[tile, member, s]) @ B[slot, chunk]^T``, the
        chunk's ``CHUNK_N`` columns in blocks of ``BLOCK_N`` (``ADD``: ``+=`` onto the base
        product, and tiles of slot 0 touch nothing)."""
        tile = tl.program_id(0)
        blk = tl.program_id(1)
        slot = tl.load(tile_slot_ptr + tile).to(tl.int64)
        offs_m = tl.arange(0, BLOCK_M)
        rows = tl.load(tok_ptr + tile * BLOCK_M + offs_m)
        row_ok = rows >= 0
        rows64 = tl.where(row_ok, rows, 0).to(tl.int64)
        live = tl.load(tok_ptr + tile * BLOCK_M) >= 0
        if ADD:
            live = live & (slot != 0)
        crow = block_ptr + blk * 7
        b_off = tl.multiple_of(tl.load(crow + 1).to(tl.int64), ALIGN)
        col0 = tl.multiple_of(tl.load(crow + 2), ALIGN)
        ncol = tl.where(live, tl.load(crow + 3), 0)
        dcol = tl.multiple_of(tl.load(crow + 4), ALIGN)
        member = tl.load(crow + 5)
        offs_r = tl.arange(0, R)
        offs_t = offs_m[:, None] * R + offs_r[None, :]
        src = part_ptr + (tile * members + member).to(tl.int64) * (split * BLOCK_M * R)
        total = tl.zeros((BLOCK_M, R), dtype=tl.float32)
        for s in range(0, tl.where(live, split, 0)):  # a fixed order: deterministic
            total += tl.load(src + s * (BLOCK_M * R) + offs_t)
        if HAS_SCALE:
            s_off = tl.load(crow + 6).to(tl.int64)
            total = _rank_scales(total, scale_ptr, scale_stride, slot, s_off, offs_r)
        _expand(total, w_ptr + slot * slot_stride, b_off, col0, ncol, dcol, d_ptr, stride_dm,
                rows64, row_ok, offs_r, R, BLOCK_N, CHUNK_N, ADD)  # fmt: skip

    @triton.jit
    def _lora_shrink_rows_kernel(
        x_ptr, stride_xm, w_ptr, slot_stride, idx_ptr, a_off_ptr, part_ptr, K, k_per,
        R: tl.constexpr, BLOCK_K: tl.constexpr, ALIGN: tl.constexpr,
    ):  # fmt: skip
        """``part[row, member, s] = x[row, slice s] @ A[slot(row), member, :, slice s]^T``: one
        row per program, no tiles (a GEMV, as Punica's BGMV); slot 0 (no adapter) does no work."""
        row = tl.program_id(0)
        member = tl.program_id(1)
        s = tl.program_id(2)
        split = tl.num_programs(2)
        slot = tl.load(idx_ptr + row).to(tl.int64)
        a_off = tl.multiple_of(tl.load(a_off_ptr + member).to(tl.int64), ALIGN)
        base = w_ptr + slot * slot_stride + a_off
        offs_r = tl.arange(0, R)
        offs_k = tl.arange(0, BLOCK_K)
        k_lo = s * k_per
        k_hi = tl.where(slot != 0, tl.minimum(k_lo + k_per, K), k_lo)
        acc = tl.zeros((R, BLOCK_K), dtype=tl.float32)
        x_row = x_ptr + row.to(tl.int64) * stride_xm
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            xv = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
            at = tl.load(base + offs_r[:, None] * K + kk[None, :], mask=k_ok[None, :], other=0.0)
            acc += at.to(tl.float32) * xv[None, :]
        job = (row * tl.num_programs(1) + member).to(tl.int64)
        tl.store(part_ptr + (job * split + s) * R + offs_r, tl.sum(acc, axis=1))

    @triton.jit(do_not_specialize=["members", "split", "n_rows", "scale_stride"])
    def _lora_expand_rows_kernel(
        w_ptr, slot_stride, d_ptr, stride_dm, idx_ptr, block_ptr, part_ptr, members, split,
        n_rows, scale_ptr, scale_stride, R: tl.constexpr, BLOCK_N: tl.constexpr,
        ROWS: tl.constexpr, ADD: tl.constexpr, ALIGN: tl.constexpr, HAS_SCALE: tl.constexpr,
    ):  # fmt: skip
        """``delta[rows, block] = (sum_s part[row, member, s]) @ B[slot(row), block]^T`` for
        ``ROWS`` consecutive rows, each with its own adapter (``ADD``: ``+=`` onto the base
        product, and rows of slot 0 touch nothing)."""
        blk = tl.program_id(1)
        offs_m = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        m_ok = offs_m < n_rows
        slot = tl.load(idx_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
        live = m_ok & (slot != 0)  # slot 0: no weights read
        crow = block_ptr + blk * 7
        b_off = tl.multiple_of(tl.load(crow + 1).to(tl.int64), ALIGN)
        col0 = tl.multiple_of(tl.load(crow + 2), ALIGN)
        ncol = tl.load(crow + 3)
        dcol = tl.multiple_of(tl.load(crow + 4), ALIGN)
        member = tl.load(crow + 5)
        offs_r = tl.arange(0, R)
        src = part_ptr + ((offs_m * members + member).to(tl.int64) * split)[:, None] * R
        t = tl.zeros((ROWS, R), dtype=tl.float32)
        for s in range(0, split):  # a fixed order: deterministic
            t += tl.load(src + s * R + offs_r[None, :], mask=live[:, None], other=0.0)
        if HAS_SCALE:  # each row its own slot's rank scales
            s_off = tl.load(crow + 6).to(tl.int64)
            c_ptr = scale_ptr + (slot * scale_stride + s_off)[:, None] + offs_r[None, :]
            t = t * tl.load(c_ptr, mask=live[:, None], other=0.0)
        t = t.to(d_ptr.dtype.element_ty).to(tl.float32)  # rounded to the model dtype, as PEFT
        offs_n = tl.arange(0, BLOCK_N)
        c_ok = offs_n < ncol
        mcols = col0 + offs_n
        b_ptr = (
            w_ptr + (slot * slot_stride + b_off)[:, None, None]
            + (mcols.to(tl.int64) * R)[None, :, None] + offs_r[None, None, :]
        )  # fmt: skip
        bt = tl.load(b_ptr, mask=live[:, None, None] & c_ok[None, :, None], other=0.0)
        out = tl.sum(bt.to(tl.float32) * t[:, None, :], axis=2)  # [ROWS, BLOCK_N]
        dst = d_ptr + offs_m.to(tl.int64)[:, None] * stride_dm + (dcol + mcols)[None, :]
        if ADD:
            mask = live[:, None] & c_ok[None, :]
            out += tl.load(dst, mask=mask, other=0.0).to(tl.float32)
            tl.store(dst, out.to(d_ptr.dtype.element_ty), mask=mask)
        else:  # zeros for slot 0
            tl.store(dst, out.to(d_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])

    @triton.jit
    def _l2_prefetch_kernel(
        w_ptr, slot_stride, slots_ptr, n_slots, start, n_lines,
        LINE: tl.constexpr, BLOCK: tl.constexpr, PREFETCH: tl.constexpr,
    ):  # fmt: skip
        """Hint ``n_lines`` 128-byte lines of one listed slot (``LINE`` elements each), from
        element ``start``, into L2 with the PTX instruction ``PREFETCH`` (``prefetch.global.L2``
        or its ``::evict_last`` form); program ``(i, j)`` takes block ``j`` of the lines of
        slot ``slots[i]``. A prefetch moves nothing into registers and writes nothing: slot 0
        (no adapter) and slots out of range are skipped, and a block's tail repeats the last
        line."""
        slot = tl.load(slots_ptr + tl.program_id(0)).to(tl.int64)
        if (slot > 0) & (slot < n_slots):
            line = tl.minimum(tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), n_lines - 1)
            ptrs = w_ptr + slot * slot_stride + start + line.to(tl.int64) * LINE
            tl.inline_asm_elementwise(
                PREFETCH + " [$1]; mov.u32 $0, 0;", "=r,l", [ptrs],
                dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip


else:  # pragma: no cover - depends on the machine
    _lora_group_kernel = _lora_shrink_kernel = _lora_expand_kernel = None
    _lora_shrink_rows_kernel = _lora_expand_rows_kernel = _l2_prefetch_kernel = None
