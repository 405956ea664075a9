"""The adapter choice of a forward pass: which slot each batch row uses, and its device form.

:class:`AdapterContext` is shared by every slot layer of a model; ``set(slots)`` (one slot per
batch row, 0 = no adapter) makes a :class:`ForwardPlan` that the layers read. A plan turns the
slots into device tensors once per forward: per-row indices (gather + bmm) and tiles of
:data:`TILE_M` tokens of one adapter (Triton). :class:`StaticPlanBuffers` holds the same for a
decode step replayed as a CUDA graph, written in place when the batch changes.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from typing import Any

import torch

from .config import LoraKernelConfig

TILE_M = 16  # tokens per Triton tile (the smallest tl.dot size)


def _to_device(values: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        # pinned + non_blocking: no stream synchronisation in the middle of a forward
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def tile_lists(slots: list[int], per_row: int = 1) -> tuple[list[int], list[int]]:
    """Tokens grouped by slot into tiles of :data:`TILE_M`: ``(tile_slots, toks)``, where
    ``toks`` holds ``TILE_M`` token indices per tile (``-1`` pads a tile) and token
    ``i * per_row + j`` is position ``j`` of row ``i``."""
    by_slot: dict[int, list[int]] = {}
    for row, slot in enumerate(slots):
        by_slot.setdefault(slot, []).extend(range(row * per_row, (row + 1) * per_row))
    tile_slots: list[int] = []
    toks: list[int] = []
    for slot, tokens in by_slot.items():
        for start in range(0, len(tokens), TILE_M):
            part = tokens[start : start + TILE_M]
            tile_slots.append(slot)
            toks.extend(part + [-1] * (TILE_M - len(part)))
    return tile_slots, toks


class StaticPlanBuffers:
    """Device buffers that hold a decode batch's adapter choice for a replayed CUDA graph.

    A graph bakes in tensor addresses and the kernels' grid sizes, not the values: the
    rows' slots (``idx``, for gather+bmm) and the Triton tiles (``tok``/``tile_slot``) are
    written here in place when the batch's composition changes, and a graph captured for
    the same number of tile slots (:meth:`write` returns it: the tile count rounded up to a
    power of two, padded with empty tiles that the kernel skips) serves every composition.
    ``rows`` is the largest batch; one token per row (decode).
    """

    def __init__(self, rows: int, device: torch.device):
        self.rows = rows
        self.device = device
        self.idx = torch.zeros(rows, dtype=torch.long, device=device)
        self.tile_slot = torch.zeros(rows, dtype=torch.int32, device=device)
        self.tok = torch.full((rows * TILE_M,), -1, dtype=torch.int32, device=device)
        self.slots: tuple[int, ...] = ()
        self.tiles = 0
        self.side: Any = None  # made by plan(), at the config's side_priority
        self.fetch: Any = None  # the L2 hint stream, made when config.l2_prefetch asks
        self._priority: int | None = None

    def write(self, slots: list[int]) -> int:
        """Put ``slots`` (one per row, padding rows 0) into the buffers; returns the tile
        count the graph is captured for."""
        key = tuple(slots)
        if key == self.slots:
            return self.tiles
        if len(slots) > self.rows:
            raise ValueError(f"{len(slots)} rows do not fit buffers made for {self.rows}")
        tile_slots, toks = tile_lists(slots)
        tiles = 1 << max(len(tile_slots) - 1, 0).bit_length()
        tiles = min(tiles, self.rows)
        pad = tiles - len(tile_slots)
        tile_slots += [0] * pad
        toks += [-1] * (pad * TILE_M)
        values = torch.tensor(slots + tile_slots + toks, dtype=torch.long)
        n, t = len(slots), len(tile_slots)
        self.idx[:n].copy_(values[:n])
        self.tile_slot[:t].copy_(values[n : n + t])
        self.tok[: t * TILE_M].copy_(values[n + t :])
        self.slots, self.tiles = key, tiles
        return tiles

    def plan(self, version: int, config: LoraKernelConfig | None = None) -> ForwardPlan:
        """A plan that reads these buffers (no host-to-device copy, no host-side grouping);
        with ``config.overlap`` on CUDA, the LoRA runs on a side stream of
        ``config.side_priority``."""
        config = config or LoraKernelConfig()
        n = len(self.slots)
        plan = ForwardPlan(version, list(self.slots), None, self.device)
        plan.graphed = True
        if self.device.type == "cuda" and config.overlap:
            priority = config.side_priority
            if self._priority != priority:  # graphs bake the stream in when captured
                self.side = torch.cuda.Stream(self.device, priority=priority)
                self.fetch = None
                self._priority = priority
            plan.side = self.side
            if config.l2_prefetch > 0:
                if self.fetch is None:
                    self.fetch = torch.cuda.Stream(self.device, priority=priority)
                plan.fetch = self.fetch
        plan._idx = self.idx[:n]
        plan._tiles[1] = (self.tok[: self.tiles * TILE_M], self.tile_slot[: self.tiles], self.tiles)
        return plan


class ForwardPlan:
    """The adapter choice of one forward: slots per row, plus device-side index tensors."""

    __slots__ = (
        "version", "slots", "uniform", "device", "_idx", "_tiles", "_stream", "_masks", "side",
        "graphed", "defer", "fetch", "fetched", "fetch_open",
    )  # fmt: skip

    def __init__(self, version: int, slots: list[int], uniform: int | None, device: torch.device):
        self.version = version
        self.slots = slots
        self.uniform = uniform
        self.device = device
        self._idx: torch.Tensor | None = None
        self._tiles: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._stream: int | None = None
        self._masks: dict[tuple, torch.Tensor] = {}
        # a second CUDA stream: the Triton deltas run on it beside the base GEMMs
        self.side: Any = None
        # a decode step over StaticPlanBuffers (recorded as a CUDA graph on CUDA): the LoRA
        # runs as two launches beside (``side``) or around the base GEMM
        self.graphed = False
        # the caller adds each delta itself, inside the op that reads the GEMM's product
        # next (:func:`~.layer.take_delta`); the layers return the base product alone
        self.defer = False
        # a third stream (graphed, config.l2_prefetch): each group hints the slot regions of
        # the groups after it into L2 there (:meth:`~.layer.LoraGroup.prefetch_ahead`);
        # ``fetched``: the slot element up to which this forward has hinted; ``fetch_open``:
        # a hint not yet joined into the side stream
        self.fetch: Any = None
        self.fetched = 0
        self.fetch_open = False

    @property
    def rows(self) -> int:
        return len(self.slots)

    def distinct(self) -> tuple[int, ...]:
        """The adapter slots of this forward, each once, in row order (no 0)."""
        return tuple(dict.fromkeys(s for s in self.slots if s))

    def mask(
        self, slots: tuple[int, ...], members: int, width: int, per_row: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """``[tokens, members * len(slots) * width]``: 1 where a column block (member-major,
        then slot, then rank) belongs to the token's own adapter, else 0 (see
        :meth:`_Group._apply_cpu`). Made once per forward, shared by the groups."""
        key = (slots, members, width, per_row, dtype)
        mask = self._masks.get(key)
        if mask is None:
            rows = torch.tensor(self.slots, device=self.device)
            own = rows[:, None] == torch.tensor(slots, device=self.device)[None, :]  # [rows, k]
            cols = own[:, None, :, None].expand(-1, members, -1, width)
            mask = cols.reshape(len(self.slots), -1).to(dtype)
            if per_row > 1:
                mask = mask.repeat_interleave(per_row, 0)
            self._masks[key] = mask
        return mask

    def stream(self) -> int | None:
        """The raw CUDA stream of this forward (looked up once, for kernel launches)."""
        if self._stream is None and self.device.type == "cuda":
            self._stream = torch.cuda.current_stream(self.device).cuda_stream
        return self._stream

    def idx(self) -> torch.Tensor:
        """``[rows]`` slot numbers (long) on the device, for gathers."""
        if self._idx is None:
            self._idx = _to_device(self.slots, torch.long, self.device)
        return self._idx

    def tiles(self, per_row: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Tokens grouped by slot into tiles of :data:`TILE_M`: ``(tok, tile_slot, tiles)``.

        ``tok`` is ``[tiles * TILE_M]`` token indices (``-1`` pads a tile), ``tile_slot`` is
        ``[tiles]``; token ``i * per_row + j`` is position ``j`` of row ``i``.
        """
        cached = self._tiles.get(per_row)
        if cached is not None:
            return cached
        tile_slots, toks = tile_lists(self.slots, per_row)
        n = len(tile_slots)
        pad = -n % 16  # keep ``tok`` 64-byte aligned inside the shared buffer
        buf = _to_device(tile_slots + [0] * pad + toks, torch.int32, self.device)
        out = (buf[n + pad :], buf[:n], n)
        self._tiles[per_row] = out
        return out


class AdapterContext:
    """The adapter choice of the current forward pass, shared by all slot layers of a model.

    ``set(slots)`` takes one slot number per batch row (0 = no adapter). ``uniform`` is the
    single slot when every row uses the same one, else ``None``; ``indices`` is the per-row
    slot tensor of a mixed batch. ``set`` also makes the compute stream wait for adapter
    copies still in flight (see :meth:`SlotLayers.load`).
    """

    def __init__(self, config: LoraKernelConfig | None = None) -> None:
        self.config = config or LoraKernelConfig()
        self.uniform: int | None = 0
        self.plan: ForwardPlan | None = None
        self._versions = itertools.count(1)
        self._pending: list[Any] = []  # CUDA events of slot copies not yet waited on
        self._pending_lock = threading.Lock()
        # bumped when the slot stack, the wrapped modules or the backend change: CUDA graphs
        # recorded before read tensors that no longer serve
        self.epoch = 0

    @property
    def indices(self) -> torch.Tensor | None:
        plan = self.plan
        return None if plan is None or plan.uniform is not None else plan.idx()

    def add_pending(self, event: Any) -> None:
        with self._pending_lock:
            self._pending.append(event)

    def wait_copies(self) -> None:
        """Order the current stream after every adapter copy issued so far.

        Not while the current stream records a CUDA graph: a recording may not wait on work
        outside it (``cudaErrorStreamCaptureIsolation``, which turned an engine's graphs off
        for good when an adapter load landed between a step's eager run and its recording);
        the copies stay pending for the wait before the next replay (``StepGraphs.run``).
        A recording computes nothing itself: the eager run before it gives the step's result.
        """
        if not self._pending:
            return  # (on a CPU-only build, too: only CUDA copies leave events)
        if torch.cuda.is_current_stream_capturing():
            return
        with self._pending_lock:
            pending, self._pending = self._pending, []
        stream = torch.cuda.current_stream()
        for event in pending:
            stream.wait_event(event)

    def set(self, slots: list[int], device: torch.device | str = "cpu") -> None:
        self.wait_copies()
        first = slots[0] if slots else 0
        uniform = first if all(s == first for s in slots) else None
        self.uniform = uniform
        if uniform == 0:
            self.plan = None
        else:
            self.plan = ForwardPlan(
                next(self._versions), list(slots), uniform, torch.device(device)
            )

    def clear(self) -> None:
        self.uniform, self.plan = 0, None

    @contextmanager
    def use_static(self, buffers: StaticPlanBuffers | None):
        """Run forwards with the slots written into ``buffers`` (``None``: no adapter), as a
        mixed batch whatever the rows hold, so that the work recorded in a CUDA graph does
        not depend on the composition (a slot's zero padding makes an untargeted module's
        delta zero)."""
        self.wait_copies()
        self.uniform = None if buffers is not None else 0
        self.plan = None if buffers is None else buffers.plan(next(self._versions), self.config)
        try:
            yield self
        finally:
            plan = self.plan
            if plan is not None and plan.fetch_open:  # a capture must end on one stream
                torch.cuda.current_stream(plan.device).wait_stream(plan.fetch)
            self.clear()

    @contextmanager
    def use(self, slots: list[int], device: torch.device | str = "cpu"):
        """Run forwards with ``slots`` (one per batch row); restores "no adapter" after."""
        self.set(slots, device)
        try:
            yield self
        finally:
            self.clear()
