"""Launchers of the LoRA kernels (:mod:`.kernels`): one per group of modules and kernel form.

A launcher fixes what does not change between calls (the group's offsets in the slot stack,
its column blocks, scratch buffers a recorded CUDA graph reads) and states its semantics in
its first line; ``s[t]`` is token ``t``'s adapter slot and B is pre-scaled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ._triton import IMPORT_ERROR
from .config import LoraKernelConfig
from .kernels import (
    _l2_prefetch_kernel,
    _lora_expand_kernel,
    _lora_expand_rows_kernel,
    _lora_group_kernel,
    _lora_shrink_kernel,
    _lora_shrink_rows_kernel,
    triton,
)

logger = logging.getLogger(__name__)


def unavailable_reason(device: torch.device, *, interpret: bool = False) -> str | None:
    """Why the kernels cannot run on ``device`` (``None`` when they can); ``interpret``: Triton's
    CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return f"triton is not installed ({IMPORT_ERROR})"
    if device.type != "cuda" and not interpret:
        return f"the Triton kernel needs a CUDA device, not {device.type}"
    return None


def chunk_width(total_cols: int, in_features: int) -> int:
    """Output columns per program: enough programs to fill the GPU, few shrink re-reads."""
    want = max(total_cols // 12, in_features // 8, 1)
    width = 1 << (want - 1).bit_length()
    return int(min(max(width, 256), 2048))


def chunk_rows(members: Sequence[tuple[int, ...]], chunk: int) -> list[tuple[int, ...]]:
    """Rows ``(a_off, b_off, col0, ncol, dcol, member, s_off)``, one per ``chunk`` output
    columns.

    ``members``: ``(a_off, b_off, out_features[, s_off])`` per module of the group, in delta
    order (``s_off``: its rank scales' offset in a quantized slot, else 0).
    """
    rows: list[tuple[int, ...]] = []
    dcol = 0
    for member, (a_off, b_off, fout, *rest) in enumerate(members):
        s_off = rest[0] if rest else 0
        for col0 in range(0, fout, chunk):
            rows.append((a_off, b_off, col0, min(chunk, fout - col0), dcol, member, s_off))
        dcol += fout
    if max(max(r[0], r[1]) for r in rows) >= 2**31:
        raise ValueError("a slot is too large for int32 offsets; use fewer modules or a lower rank")
    return rows


def chunk_table(
    members: Sequence[tuple[int, ...]], chunk: int, device: torch.device
) -> torch.Tensor:
    """:func:`chunk_rows` as a ``[chunks, 7]`` int32 tensor on ``device`` (the kernels step
    through its rows by 7)."""
    return torch.tensor(chunk_rows(members, chunk), dtype=torch.int32).to(device)


class GroupLauncher:
    """``delta[t] = (x[t] @ A[s[t]]^T) @ B[s[t]]^T`` for every module of one group, tokens in
    tiles of one slot: the fused kernel, one launch (eager and prefill forwards).

    After the first launch the compiled kernel is called directly with the arguments Triton
    would bind (``config.fast_launch``), since ``kernel[grid](...)`` costs more host time than
    the kernel. When the grid would not fill the GPU, the shrink is split into slices of about
    ``config.k_per_split`` inputs whose fp32 partials the last slice of each tile sums in a
    fixed order (deterministic) before the expand. ``x`` must be contiguous ``[tokens, in]``;
    ``delta`` a fresh ``[tokens, total_out]``. Measured: benchmarks/results/gpu.md.
    """

    fast_ok = True  # turned off for the process if this Triton's launch API differs
    direct = True  # call compiled.run ourselves; turned off if this Triton's API differs
    max_split = 8
    split_below = 132  # programs (about one per multiprocessor): split only smaller grids

    def __init__(
        self,
        flat: torch.Tensor,
        chunks: torch.Tensor,
        *,
        r: int,
        chunk: int,
        block_m: int,
        config: LoraKernelConfig | None = None,
        scales: torch.Tensor | None = None,
    ) -> None:
        self.config = config or LoraKernelConfig()
        self.flat = flat
        # int8 slots: their rank scales ([slots, n_scales] float32); else the kernels get
        # ``flat`` in its place and never read it
        self.scales = flat if scales is None else scales
        self.has_scale = scales is not None
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

    @property
    def fast(self) -> bool:
        config = self.config
        return config.fast_launch and not config.interpret and GroupLauncher.fast_ok

    def split(self, K: int, tiles: int) -> int:
        """How many slices the shrink of a ``K``-wide input is cut into for ``tiles`` tiles."""
        per = self.config.k_per_split
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
        key = (K, tiles, self.config.k_per_split)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = self._plan_launch(K, tiles, x.device)
        split, block_k, k_per, part, count = fixed
        if part is None:
            part, count = x, tok  # split == 1: not read by the kernel
        args = (
            x, K, self.flat, self.slot_stride, delta, total_out, tok, tile_slot, self.chunks,
            K, part, count, k_per, self.scales, self.scales.stride(0), self.r, self.block_m,
            block_k, self.block_n, self.chunk, split, self.has_scale,
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
                GroupLauncher.fast_ok = False
        compiled = _lora_group_kernel[(tiles, self.n_chunks, split)](*args[:15], R=args[15],
            BLOCK_M=args[16], BLOCK_K=args[17], BLOCK_N=args[18], CHUNK_N=args[19],
            SPLIT=split, HAS_SCALE=self.has_scale, num_warps=4)  # fmt: skip
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
    default), or after the GEMM, adding onto its product (``config.expand_adds``).
    """

    max_split = 16
    fill = 132  # shrink programs wanted
    block_k = 128  # input columns a shrink program reads per step
    warps = 4  # per program, both kernels
    int8_warps = 4  # the same, reading int8 slots
    max_align = 16  # the most the table's offsets are declared to be multiples of

    def __init__(
        self, flat: torch.Tensor, members: Sequence[tuple[int, ...]], *, r: int, cols: int,
        device: torch.device, config: LoraKernelConfig | None = None,
        scales: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        self.config = config or LoraKernelConfig()
        self.flat = flat
        self.scales = flat if scales is None else scales  # as GroupLauncher's
        self.has_scale = scales is not None
        self.r = r
        self.members = len(members)
        self.a_offs = torch.tensor([m[0] for m in members], dtype=torch.int32).to(device)
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

    @property
    def num_warps(self) -> int:
        """Warps a program of either kernel runs (read at each launch: benchmarks change the
        class attributes)."""
        return self.int8_warps if self.has_scale else self.warps

    @property
    def adds(self) -> bool:
        """Whether the expand adds onto the GEMM's product (slower on an H200:
        benchmarks/results/gpu_decode_kernels.md) instead of writing a delta buffer."""
        return self.config.expand_adds

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
    """``out[t] (+)= (x[t] @ A[s[t]]^T) @ B[s[t]]^T`` on tiles of one slot, as two launches
    (graphed decode steps, where a launch costs no host time).

    The shrink runs as ``(tiles, members, slices)`` programs that each store an fp32 partial
    ``[BLOCK_M, r]``; the expand as ``(tiles, column blocks)`` programs that sum their tile's
    partials in a fixed order (deterministic, no atomics) and write one block. Padding tiles
    (first token ``-1``) do no work.
    """

    block_n = 128
    # columns per expand program: each program sums its tile's partials once, so wider
    # chunks re-read them less (16 x r fp32 per slice) at the cost of fewer programs
    expand_cols = 256
    fill = 528  # programs wanted for the shrink (four per multiprocessor)
    warps = int8_warps = 8
    # no alignment hints for the tiles: they cost end to end where auto picks tiles
    # (benchmarks/results/gpu_decode_align.md); rows keep them
    max_align = 1

    def __init__(
        self,
        flat: torch.Tensor,
        members: Sequence[tuple[int, ...]],
        *,
        r: int,
        block_m: int,
        device: torch.device,
        config: LoraKernelConfig | None = None,
        scales: torch.Tensor | None = None,
    ) -> None:
        self.block_m = block_m
        self.expand_n = max(self.expand_cols, self.block_n)
        super().__init__(
            flat, members, r=r, cols=self.expand_n, device=device, config=config, scales=scales
        )

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
            num_warps=self.num_warps,
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
            self.members, split, self.scales, self.scales.stride(0), R=self.r,
            BLOCK_M=self.block_m, BLOCK_N=self.block_n, CHUNK_N=self.expand_n, ADD=add,
            ALIGN=self.align, HAS_SCALE=self.has_scale, num_warps=self.num_warps,
        )  # fmt: skip

    def __call__(
        self, x: torch.Tensor, delta: torch.Tensor, tok: torch.Tensor, tile_slot: torch.Tensor,
        tiles: int, *, add: bool = False,
    ) -> None:  # fmt: skip
        """Both launches: the group's deltas of ``x`` into ``delta``."""
        part, split = self.shrink(x, tok, tile_slot, tiles)
        self.expand(delta, part, split, tok, tile_slot, tiles, add=add)


class RowLauncher(_TwoLaunch):
    """``out[i] (+)= (x[i] @ A[s[i]]^T) @ B[s[i]]^T``, one row a program, each reading its
    own slot (graphed decode with many distinct adapters; Punica's BGMV form).

    A shrink program reduces one row's input slice against its adapter's A to ``r`` fp32
    values; an expand program multiplies them by one block of B. Rows of slot 0 (no
    adapter, graph padding) read no weights.
    """

    block_n = 256
    # shrink: one step of up to 1,024 inputs a program (a loop over smaller steps waits on
    # each load); needs 4 warps or more, fewer spill registers
    # (benchmarks/results/gpu_decode_kernels_fine.md)
    block_k = 1024
    fill = 1056  # programs wanted for the shrink
    # int8 slots: 8 warps a program (the shrink's [r, block_k] fp32 products in half the
    # registers a thread); 4 and 16 are slower (benchmarks/results/gpu_decode_int8_shapes.md)
    int8_warps = 8
    rows_per_program = 1  # expand: rows a program serves, each with its own adapter's B

    def __init__(
        self, flat: torch.Tensor, members: Sequence[tuple[int, ...]], *, r: int,
        device: torch.device, config: LoraKernelConfig | None = None,
        scales: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        super().__init__(
            flat, members, r=r, cols=self.block_n, device=device, config=config, scales=scales
        )

    def shrink(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(partials, slices)`` of ``x`` (``[rows, K]``, contiguous; ``idx``: ``[rows]``
        slots), on the current stream; :meth:`expand` takes them."""
        rows, K = x.shape
        split, block_k, k_per = self.plan(K, rows)
        part = self._part(rows, split, self.r, x.device)
        flat = self.flat
        _lora_shrink_rows_kernel[(rows, self.members, split)](
            x, x.stride(0), flat, flat.stride(0), idx, self.a_offs, part, K, k_per,
            R=self.r, BLOCK_K=block_k, ALIGN=self.align, num_warps=self.num_warps,
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
            split, n_rows, self.scales, self.scales.stride(0), R=self.r, BLOCK_N=self.block_n,
            ROWS=per, ADD=add, ALIGN=self.align, HAS_SCALE=self.has_scale,
            num_warps=self.num_warps,
        )  # fmt: skip

    def __call__(
        self, x: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor, *, add: bool = False
    ) -> None:
        """Both launches: the group's deltas of ``x`` into ``delta``."""
        part, split = self.shrink(x, idx)
        self.expand(delta, part, split, idx, add=add)


class L2Prefetcher:
    """Hints elements ``[start, stop)`` of each listed slot of the stack into L2, on the
    current stream: ``(slots, blocks of 128-byte lines)`` programs of prefetch instructions
    (:func:`_l2_prefetch_kernel`; nothing is read into registers or written)."""

    block = 1024  # lines a program (8 a thread at 4 warps)

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat
        self.line = max(1, 128 // flat.element_size())  # elements a line

    def __call__(
        self, slots: torch.Tensor, count: int, start: int, stop: int, *, last: bool = True
    ) -> None:
        """``slots``: the first ``count`` entries are the slots to hint (0 or out of range:
        skipped)."""
        n_lines = _ceil_div(stop - start, self.line)
        if n_lines <= 0 or count <= 0:
            return
        flat = self.flat
        _l2_prefetch_kernel[(count, _ceil_div(n_lines, self.block))](
            flat, flat.stride(0), slots, flat.shape[0], start, n_lines, LINE=self.line,
            BLOCK=self.block, PREFETCH="prefetch.global.L2" + ("::evict_last" if last else ""),
            num_warps=4,
        )  # fmt: skip


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
