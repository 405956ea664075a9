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

    @triton.jit(do_not_specialize=["stride_xm", "slot_stride", "stride_dm", "K"])
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
        R: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK_N: tl.constexpr,
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
        base = w_ptr + slot * slot_stride
        offs_r = tl.arange(0, R)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            xt = tl.load(
                x_ptr + rows64[:, None] * stride_xm + kk[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            at = tl.load(
                base + a_off + offs_r[:, None] * K + kk[None, :], mask=k_ok[None, :], other=0.0
            )
            acc += tl.dot(xt, tl.trans(at))
        t = acc.to(w_ptr.dtype.element_ty)
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
            tl.store(
                d_ptr + rows64[:, None] * stride_dm + (dcol + mcols)[None, :],
                out.to(d_ptr.dtype.element_ty),
                mask=row_ok[:, None] & c_ok[None, :],
            )


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


def chunk_table(
    members: list[tuple[int, int, int]], chunk: int, device: torch.device
) -> torch.Tensor:
    """``[chunks, 6]`` int32 rows ``(a_off, b_off, col0, ncol, dcol, 0)``.

    ``members``: ``(a_off, b_off, out_features)`` per module of the group, in delta order.
    """
    rows = []
    dcol = 0
    for a_off, b_off, fout in members:
        for col0 in range(0, fout, chunk):
            rows.append((a_off, b_off, col0, min(chunk, fout - col0), dcol, 0))
        dcol += fout
    if max(max(r[0], r[1]) for r in rows) >= 2**31:
        raise ValueError("a slot is too large for int32 offsets; use fewer modules or a lower rank")
    return torch.tensor(rows, dtype=torch.int32).to(device)


class GroupLauncher:
    """Launches the kernel for one group; caches the compiled kernel to skip Triton's binder.

    Triton's ``kernel[grid](...)`` spends most of its host time binding and specialising
    arguments. After the first launch for a given set of compile-time values we call the
    compiled kernel directly (``compiled[grid](*args)``), which is what Triton's own
    launcher does once it has found the kernel. Set ``LORAROUTE_TRITON_FAST_LAUNCH=0`` to use
    the plain path.
    """

    fast = os.environ.get("LORAROUTE_TRITON_FAST_LAUNCH", "1") != "0" and not INTERPRET

    def __init__(self) -> None:
        self._compiled: dict[tuple, Any] = {}
        self._runners: dict[tuple, Any] = {}

    def __call__(
        self,
        x: torch.Tensor,
        flat: torch.Tensor,
        delta: torch.Tensor,
        tok: torch.Tensor,
        tile_slot: torch.Tensor,
        chunks: torch.Tensor,
        *,
        r: int,
        block_m: int,
        chunk: int,
        stream: int | None = None,
    ) -> None:
        tiles, n_chunks = tile_slot.shape[0], chunks.shape[0]
        K = x.shape[1]
        block_k = 128 if K >= 128 else max(16, 1 << (K - 1).bit_length())
        block_n = min(128, chunk)
        grid = (tiles, n_chunks, 1)
        args = (
            x,
            x.stride(0),
            flat,
            flat.stride(0),
            delta,
            delta.stride(0),
            tok,
            tile_slot,
            chunks,
            K,
            r,
            block_m,
            block_k,
            block_n,
            chunk,
        )
        if self.fast:
            key = (
                r,
                block_m,
                block_k,
                block_n,
                chunk,
                x.dtype,
                x.data_ptr() % 16 == 0,
                delta.dtype,
            )
            compiled = self._compiled.get(key)
            if compiled is not None:
                try:
                    runner = self._runners.get((key, grid))
                    if runner is None:
                        runner = self._runners[(key, grid)] = compiled[grid]
                    runner(*args, stream=stream)
                    return
                except (TypeError, AttributeError, IndexError) as exc:  # another Triton API
                    logger.warning("fast Triton launch unavailable (%s); using kernel[grid]", exc)
                    GroupLauncher.fast = False
        compiled = _lora_group_kernel[grid](
            x,
            x.stride(0),
            flat,
            flat.stride(0),
            delta,
            delta.stride(0),
            tok,
            tile_slot,
            chunks,
            K,
            R=r,
            BLOCK_M=block_m,
            BLOCK_K=block_k,
            BLOCK_N=block_n,
            CHUNK_N=chunk,
            num_warps=4,
        )
        if self.fast and compiled is not None:
            self._compiled[key] = compiled
