"""A fused, adapter-grouped LoRA kernel in Triton (shrink and expand in one launch per group).

Tokens are grouped by adapter slot into tiles of ``BLOCK_M`` tokens that share one slot (the
tile list is built once per forward by :class:`~loraroute.agents.lora.AdapterContext`). One
program handles one tile and one chunk of output columns of one module of a group:

1. shrink: ``t = x[tile] @ A[slot, module]^T`` over the whole input width (``[BLOCK_M, r]``,
   fp32 accumulation, rounded to the weight dtype as PEFT does);
2. expand: ``delta[tile, cols] = t @ B[slot, module, cols]^T`` (B is pre-scaled).

It writes the delta for every module of the group (``q``, ``k`` and ``v`` together, or
``gate`` and ``up``) into one ``[tokens, sum(out)]`` buffer; each module then adds its base
product onto its slice with an in-place ``addmm_``, so a whole group costs one extra launch.
The shrink is recomputed by each column chunk of a module: it is cheap at LoRA ranks, and it
saves a second launch and a round trip of ``t`` through memory (the same trade as Punica's
fused BGMV for decode). Chunks are wide (up to 2,048 columns) to keep that recomputation low.

Everything here is optional: :data:`available` is ``False`` without Triton or a CUDA device,
and the engine then uses the PyTorch gather + bmm path in :mod:`loraroute.agents.lora`.
Setting ``TRITON_INTERPRET=1`` before import runs the kernel on CPU tensors (tests do this).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

    _IMPORT_ERROR: BaseException | None = None
except ImportError as exc:  # pragma: no cover - depends on the machine
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = exc

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CHUNK_COLS = 6  # ints per row of a chunk table

if triton is not None:

    @triton.jit
    def _expand(
        acc, base, b_off, col0, ncol, dcol, d_ptr, stride_dm, rows64, row_ok, offs_r,
        R: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr, ADD: tl.constexpr,
    ):  # fmt: skip
        """``delta[rows, chunk] = t @ B[chunk]^T`` with ``t`` rounded to the weight dtype
        (``ADD``: ``+=``, onto the base product already there)."""
        t = acc.to(base.dtype.element_ty)
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
            out = tl.dot(t, tl.trans(bt))
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
            acc += tl.dot(xt, tl.trans(at))
        return acc

    @triton.jit(do_not_specialize=["stride_xm", "slot_stride", "stride_dm", "K", "k_per"])
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
        R: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK_N: tl.constexpr,
        SPLIT: tl.constexpr,
    ):
        tile = tl.program_id(0)
        chunk = tl.program_id(1)
        slot = tl.load(tile_slot_ptr + tile).to(tl.int64)
        offs_m = tl.arange(0, BLOCK_M)
        rows = tl.load(tok_ptr + tile * BLOCK_M + offs_m)
        row_ok = rows >= 0
        rows64 = tl.where(row_ok, rows, 0).to(tl.int64)
        crow = chunk_ptr + chunk * 6
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

    @triton.jit(do_not_specialize=["members", "split"])
    def _lora_expand_kernel(
        w_ptr, slot_stride, d_ptr, stride_dm, tok_ptr, tile_slot_ptr, block_ptr, part_ptr,
        members, split, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CHUNK_N: tl.constexpr, ADD: tl.constexpr, ALIGN: tl.constexpr,
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
        crow = block_ptr + blk * 6
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

    @triton.jit(do_not_specialize=["members", "split", "n_rows"])
    def _lora_expand_rows_kernel(
        w_ptr, slot_stride, d_ptr, stride_dm, idx_ptr, block_ptr, part_ptr, members, split,
        n_rows, R: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, ADD: tl.constexpr,
        ALIGN: tl.constexpr,
    ):  # fmt: skip
        """``delta[rows, block] = (sum_s part[row, member, s]) @ B[slot(row), block]^T`` for
        ``ROWS`` consecutive rows, each with its own adapter (``ADD``: ``+=`` onto the base
        product, and rows of slot 0 touch nothing)."""
        blk = tl.program_id(1)
        offs_m = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        m_ok = offs_m < n_rows
        slot = tl.load(idx_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
        live = m_ok & (slot != 0)  # slot 0: no weights read
        crow = block_ptr + blk * 6
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
        t = t.to(w_ptr.dtype.element_ty).to(tl.float32)  # rounded to the weight dtype, as PEFT
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


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` (``None`` when it can)."""
    if triton is None:
        return f"triton is not installed ({_IMPORT_ERROR})"
    if device.type != "cuda" and not INTERPRET:
        return f"the Triton kernel needs a CUDA device, not {device.type}"
    return None


def chunk_width(total_cols: int, in_features: int) -> int:
    """Output columns per program: enough programs to fill the GPU, few shrink re-reads."""
    want = max(total_cols // 12, in_features // 8, 1)
    width = 1 << (want - 1).bit_length()
    return int(min(max(width, 256), 2048))


def chunk_rows(members: list[tuple[int, int, int]], chunk: int) -> list[tuple[int, ...]]:
    """Rows ``(a_off, b_off, col0, ncol, dcol, member)``, one per ``chunk`` output columns.

    ``members``: ``(a_off, b_off, out_features)`` per module of the group, in delta order.
    """
    rows = []
    dcol = 0
    for member, (a_off, b_off, fout) in enumerate(members):
        for col0 in range(0, fout, chunk):
            rows.append((a_off, b_off, col0, min(chunk, fout - col0), dcol, member))
        dcol += fout
    if max(max(r[0], r[1]) for r in rows) >= 2**31:
        raise ValueError("a slot is too large for int32 offsets; use fewer modules or a lower rank")
    return rows


def chunk_table(
    members: list[tuple[int, int, int]], chunk: int, device: torch.device
) -> torch.Tensor:
    """:func:`chunk_rows` as a ``[chunks, 6]`` int32 tensor on ``device``."""
    return torch.tensor(chunk_rows(members, chunk), dtype=torch.int32).to(device)


class GroupLauncher:
    """Launches the kernel for one group, with everything that does not change per call fixed.

    Triton's ``kernel[grid](...)`` spends most of its host time binding and specialising
    arguments (about 60 us a launch on the benchmark machine, more than the kernel). After
    the first launch we keep the compiled kernel and call its launcher directly with the
    same arguments Triton would pass (``compiled[grid]`` does exactly this), so a launch
    costs little more than the driver call. ``LORAROUTE_TRITON_FAST_LAUNCH=0`` turns this
    off. ``x`` must be contiguous ``[tokens, in]``; ``delta`` a fresh ``[tokens, total_out]``.

    Split-K: a decode batch has few tiles, so a group with a long input (``down_proj``'s
    14,336) ran as a handful of programs, each walking the whole input alone (latency-bound:
    about 105 us on an H200 at batch 32, against 25-32 us split). When the grid would not
    fill the GPU, the shrink is cut into slices of about :attr:`k_per_split` inputs (1,024
    was the best of 512-4,096 there) run by separate programs; the last slice of each tile
    to finish sums the partial results (in a fixed order, so the output is deterministic)
    and does the expand. The partial sums and per-tile counters live in a small scratch
    buffer owned by this launcher; the counters return to zero at the end of every launch.
    ``LORAROUTE_TRITON_K_PER_SPLIT=0`` turns splitting off.
    """

    fast = os.environ.get("LORAROUTE_TRITON_FAST_LAUNCH", "1") != "0" and not INTERPRET
    direct = True  # call compiled.run ourselves; turned off if this Triton's API differs
    k_per_split = int(os.environ.get("LORAROUTE_TRITON_K_PER_SPLIT", "1024"))
    max_split = 8
    split_below = 132  # programs (about one per multiprocessor): split only smaller grids

    def __init__(
        self, flat: torch.Tensor, chunks: torch.Tensor, *, r: int, chunk: int, block_m: int
    ) -> None:
        self.flat = flat
        self.chunks = chunks
        self.n_chunks = int(chunks.shape[0])
        self.slot_stride = flat.stride(0)
        self.r, self.chunk, self.block_m = r, chunk, block_m
        self.block_n = min(128, chunk)
        self._compiled: dict[int, Any] = {}  # split -> kernel compiled for aligned inputs
        self._launch: dict[tuple[int, int], Any] = {}  # (tiles, split) -> a ready launch
        self._fixed: dict[tuple[int, int, int], tuple] = {}  # (K, tiles, k_per_split) -> plan
        self._part: torch.Tensor | None = None  # split-K partial sums, fp32
        self._count: torch.Tensor | None = None  # split-K slices done per (tile, chunk)

    def _block_k(self, K: int) -> int:
        return 128 if K >= 128 else max(16, 1 << (K - 1).bit_length())

    def split(self, K: int, tiles: int) -> int:
        """How many slices the shrink of a ``K``-wide input is cut into for ``tiles`` tiles."""
        per = self.k_per_split
        if per <= 0 or per >= K or tiles * self.n_chunks >= self.split_below:
            return 1
        return min(self.max_split, _ceil_div(K, per))

    def _scratch(self, jobs: int, split: int, device: torch.device) -> tuple[Any, Any]:
        part_numel = jobs * split * self.block_m * self.r
        if self._part is None or self._part.numel() < part_numel:
            self._part = torch.empty(part_numel, dtype=torch.float32, device=device)
        if self._count is None or self._count.numel() < jobs:
            self._count = torch.zeros(jobs, dtype=torch.int32, device=device)
        return self._part, self._count

    def __call__(
        self,
        x: torch.Tensor,
        delta: torch.Tensor,
        tok: torch.Tensor,
        tile_slot: torch.Tensor,
        tiles: int,
        total_out: int,
        stream: int | None,
    ) -> None:
        K = x.shape[1]
        key = (K, tiles, self.k_per_split)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = self._plan_launch(K, tiles, x.device)
        split, block_k, k_per, part, count = fixed
        if part is None:
            part, count = x, tok  # split == 1: not read by the kernel
        args = (
            x, K, self.flat, self.slot_stride, delta, total_out, tok, tile_slot, self.chunks,
            K, part, count, k_per, self.r, self.block_m, block_k, self.block_n, self.chunk,
            split,
        )  # fmt: skip
        aligned = (x.data_ptr() & 15) == 0
        if self.fast and aligned and split in self._compiled:
            launch = self._launch.get((tiles, split))
            if launch is None:
                launch = self._launch[(tiles, split)] = self._make_launch(tiles, split)
            try:
                launch(stream, args)
                return
            except (TypeError, AttributeError, IndexError, ValueError) as exc:
                logger.warning("fast Triton launch failed (%s); using kernel[grid]", exc)
                GroupLauncher.fast = False
        compiled = _lora_group_kernel[(tiles, self.n_chunks, split)](*args[:13], R=args[13],
            BLOCK_M=args[14], BLOCK_K=args[15], BLOCK_N=args[16], CHUNK_N=args[17],
            SPLIT=split, num_warps=4)  # fmt: skip
        if aligned and compiled is not None:
            self._compiled[split] = compiled

    def _plan_launch(self, K: int, tiles: int, device: torch.device) -> tuple:
        """``(split, block_k, k_per, part, count)`` for a ``K``-wide input and ``tiles`` tiles
        (``part``/``count`` are ``None`` without split-K)."""
        block_k = self._block_k(K)
        split = self.split(K, tiles)
        k_per = K
        if split > 1:
            k_per = _ceil_div(_ceil_div(K, split), block_k) * block_k
            split = _ceil_div(K, k_per)  # no empty slices once rounded to whole blocks
        if split == 1:
            return 1, block_k, K, None, None
        part, count = self._scratch(tiles * self.n_chunks, split, device)
        return split, block_k, k_per, part, count

    def _make_launch(self, tiles: int, split: int) -> Any:
        compiled = self._compiled[split]
        grid = (tiles, self.n_chunks, split)
        runner = compiled[grid]  # also loads the module (Triton's _init_handles)
        hooks = _launch_hooks()
        if self.direct and hooks == (None, None):
            run = compiled.run
            function, packed = compiled.function, compiled.packed_metadata
            g0, g1, g2 = grid

            def direct(stream: int | None, args: tuple) -> None:
                if stream is None:
                    runner(*args)
                else:  # what runner does, minus its per-call lookups
                    run(g0, g1, g2, stream, function, packed, None, None, None, *args)

            return direct

        def plain(stream: int | None, args: tuple) -> None:
            runner(*args, stream=stream)

        return plain


class _TwoLaunch:
    """What the two-launch decode paths share: the group's A offsets, its expand column
    blocks, fp32 partial buffers kept for the launcher's life (a recorded graph reads them),
    and how many input slices the shrink is cut into.

    The shrink and the expand are separate calls, so that a graphed step can put the
    expand either beside the base GEMM, into a delta buffer that one add joins (the
    default), or after the GEMM, adding onto its product (``add=True``).
    """

    max_split = 16
    fill = 132  # shrink programs wanted
    block_k = 128  # input columns a shrink program reads per step
    warps = 4  # per program, both kernels
    max_align = 16  # the most the table's offsets are declared to be multiples of
    # where the expand of a graphed step goes: beside the base GEMM into a delta buffer,
    # then one add (the default); or after the GEMM, adding onto its product (no buffer, no
    # add, but the expand waits for the GEMM: 2-25 us a layer slower on an H200, see
    # benchmarks/results/gpu_decode_kernels_shapes.md and gpu_decode_kernels.md)
    adds = os.environ.get("LORAROUTE_LORA_EXPAND_ADDS", "0") == "1"

    def __init__(
        self, flat: torch.Tensor, members: list[tuple[int, int, int]], *, r: int, cols: int,
        device: torch.device,
    ) -> None:  # fmt: skip
        self.flat = flat
        self.r = r
        self.members = len(members)
        self.a_offs = torch.tensor([a for a, _, _ in members], dtype=torch.int32).to(device)
        rows = chunk_rows(members, cols)
        self.blocks = torch.tensor(rows, dtype=torch.int32).to(device)
        self.n_blocks = len(rows)
        self._parts: dict[tuple[int, int], torch.Tensor] = {}
        # what the table's offsets (A, B, chunk and delta columns) are all multiples of, in
        # elements: the kernels tell the compiler, which can then load and store in 16-byte
        # vectors (it cannot know values read from memory; strides and sizes passed as
        # arguments it checks itself)
        offsets = [v for row in rows for v in (row[0], row[1], row[2], row[4])]
        self.align = self.max_align
        while self.align > 1 and any(o % self.align for o in offsets):
            self.align //= 2

    def plan(self, K: int, units: int) -> tuple[int, int, int]:
        """``(split, block_k, k_per)`` for a ``K``-wide input over ``units`` tiles or rows."""
        block_k = min(self.block_k, max(16, 1 << (K - 1).bit_length()))
        want = _ceil_div(self.fill, units * self.members)
        split = max(1, min(self.max_split, want, _ceil_div(K, block_k)))
        k_per = _ceil_div(_ceil_div(K, split), block_k) * block_k
        return _ceil_div(K, k_per), block_k, k_per

    def _part(self, units: int, split: int, per_unit: int, device: torch.device) -> torch.Tensor:
        part = self._parts.get((units, split))
        if part is None:
            numel = units * self.members * split * per_unit
            part = self._parts[(units, split)] = torch.empty(
                numel, dtype=torch.float32, device=device
            )
        return part


class SplitLauncher(_TwoLaunch):
    """The group's LoRA as two launches, shrink then expand, for decode steps replayed as
    CUDA graphs (where a launch costs no host time).

    The fused kernel (:class:`GroupLauncher`) chains shrink, a split-K reduction and an
    expand of up to 2,048 columns inside one program, so a decode batch's few tiles wait
    on that chain (10-60 us a group on an H200). Here the shrink runs as
    ``(tiles, members, slices)`` programs that each store an fp32 partial ``[BLOCK_M, r]``
    (enough slices of the input to fill the GPU, at most :attr:`max_split`), and the
    expand as ``(tiles, column blocks of BLOCK_N)`` programs that each sum their tile's
    partials in a fixed order (deterministic, no atomics, no zeroing) and write one block.
    Padding tiles (first token ``-1``) do no work. The partials live in buffers owned by
    this launcher and kept for its life (a recorded graph reads them).
    """

    block_n = 128
    # columns per expand program: each program sums its tile's partials once, so wider
    # chunks re-read them less (16 x r fp32 per slice) at the cost of fewer programs
    expand_cols = 256
    fill = 528  # programs wanted for the shrink (four per multiprocessor)
    warps = 8
    # the tiles' kernels are not told the offsets' alignment: on an H200 the hints cut their
    # layer time at 8 and 32 distinct adapters but cost 3-5% end to end at 1, where auto
    # uses tiles (benchmarks/results/gpu_decode_align.md); rows keep them
    max_align = 1

    def __init__(
        self,
        flat: torch.Tensor,
        members: list[tuple[int, int, int]],
        *,
        r: int,
        block_m: int,
        device: torch.device,
    ) -> None:
        self.block_m = block_m
        self.expand_n = max(self.expand_cols, self.block_n)
        super().__init__(flat, members, r=r, cols=self.expand_n, device=device)

    def shrink(
        self, x: torch.Tensor, tok: torch.Tensor, tile_slot: torch.Tensor, tiles: int
    ) -> tuple[torch.Tensor, int]:
        """``(partials, slices)`` of ``x`` (``[tokens, K]``, contiguous), on the current
        stream; :meth:`expand` takes them."""
        K = x.shape[1]
        split, block_k, k_per = self.plan(K, tiles)
        part = self._part(tiles, split, self.block_m * self.r, x.device)
        flat = self.flat
        _lora_shrink_kernel[(tiles, self.members, split)](
            x, x.stride(0), flat, flat.stride(0), tok, tile_slot, self.a_offs, part, K, k_per,
            R=self.r, BLOCK_M=self.block_m, BLOCK_K=block_k, ALIGN=self.align,
            num_warps=self.warps,
        )  # fmt: skip
        return part, split

    def expand(
        self, out: torch.Tensor, part: torch.Tensor, split: int, tok: torch.Tensor,
        tile_slot: torch.Tensor, tiles: int, *, add: bool = False,
    ) -> None:  # fmt: skip
        """Write (``add``: add) the group's deltas into ``out`` (``[tokens, total_out]``,
        contiguous) on the current stream."""
        flat = self.flat
        _lora_expand_kernel[(tiles, self.n_blocks)](
            flat, flat.stride(0), out, out.stride(0), tok, tile_slot, self.blocks, part,
            self.members, split, R=self.r, BLOCK_M=self.block_m, BLOCK_N=self.block_n,
            CHUNK_N=self.expand_n, ADD=add, ALIGN=self.align, num_warps=self.warps,
        )  # fmt: skip

    def __call__(
        self, x: torch.Tensor, delta: torch.Tensor, tok: torch.Tensor, tile_slot: torch.Tensor,
        tiles: int, *, add: bool = False,
    ) -> None:  # fmt: skip
        """Both launches: the group's deltas of ``x`` into ``delta``."""
        part, split = self.shrink(x, tok, tile_slot, tiles)
        self.expand(delta, part, split, tok, tile_slot, tiles, add=add)


class RowLauncher(_TwoLaunch):
    """The group's LoRA as two launches for decode steps replayed as CUDA graphs, one row
    per program (rows in batch order, each reading its own slot; no tiles): the BGMV form of
    Punica.

    :class:`SplitLauncher` computes on tiles of 16 tokens that share an adapter, so with
    many distinct adapters in a decode batch most of each tile is padding, and every
    expand program re-reads its tile's ``[16, r]`` fp32 partials. Here a shrink program
    reduces one row's input slice against its adapter's A (``[r, slice]``) to ``r`` fp32
    values, and an expand program multiplies them by one block of B. Rows with slot 0 (no
    adapter, graph padding) read no weights. The bytes of adapter weights are the same;
    rows that share an adapter re-read them, mostly from L2.
    """

    block_n = 256
    # shrink: one step of up to 1,024 inputs a program (max_split slices allowing): a
    # program that loops over its slice waits on each load in turn (latency-bound: steps of
    # 128 inputs cost 20 us a layer more on an H200). 1,024 needs 4 warps or more: at 2,
    # the [r, 1024] products spill registers (nine times slower)
    block_k = 1024
    fill = 1056  # programs wanted for the shrink
    rows_per_program = 1  # expand: rows a program serves, each with its own adapter's B

    def __init__(
        self, flat: torch.Tensor, members: list[tuple[int, int, int]], *, r: int,
        device: torch.device,
    ) -> None:  # fmt: skip
        super().__init__(flat, members, r=r, cols=self.block_n, device=device)

    def shrink(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(partials, slices)`` of ``x`` (``[rows, K]``, contiguous; ``idx``: ``[rows]``
        slots), on the current stream; :meth:`expand` takes them."""
        rows, K = x.shape
        split, block_k, k_per = self.plan(K, rows)
        part = self._part(rows, split, self.r, x.device)
        flat = self.flat
        _lora_shrink_rows_kernel[(rows, self.members, split)](
            x, x.stride(0), flat, flat.stride(0), idx, self.a_offs, part, K, k_per,
            R=self.r, BLOCK_K=block_k, ALIGN=self.align, num_warps=self.warps,
        )  # fmt: skip
        return part, split

    def expand(
        self, out: torch.Tensor, part: torch.Tensor, split: int, idx: torch.Tensor, *,
        add: bool = False,
    ) -> None:  # fmt: skip
        """Write (``add``: add) the group's deltas into ``out`` (``[rows, total_out]``,
        contiguous) on the current stream; without ``add``, rows of slot 0 get zeros."""
        flat = self.flat
        n_rows = out.shape[0]
        per = self.rows_per_program
        _lora_expand_rows_kernel[(_ceil_div(n_rows, per), self.n_blocks)](
            flat, flat.stride(0), out, out.stride(0), idx, self.blocks, part, self.members,
            split, n_rows, R=self.r, BLOCK_N=self.block_n, ROWS=per, ADD=add,
            ALIGN=self.align, num_warps=self.warps,
        )  # fmt: skip

    def __call__(
        self, x: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor, *, add: bool = False
    ) -> None:
        """Both launches: the group's deltas of ``x`` into ``delta``."""
        part, split = self.shrink(x, idx)
        self.expand(delta, part, split, idx, add=add)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _launch_hooks() -> tuple[Any, Any]:
    """Triton's launch enter/exit hooks (profilers set them); ``(None, None)`` normally."""
    try:
        from triton import knobs

        return knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    except (ImportError, AttributeError):
        from triton.compiler.compiler import CompiledKernel

        return (
            getattr(CompiledKernel, "launch_enter_hook", None),
            getattr(CompiledKernel, "launch_exit_hook", None),
        )
