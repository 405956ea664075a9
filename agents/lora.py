"""Our LoRA layer: stacked adapter slots per targeted ``nn.Linear``, chosen per batch row.

All resident adapters live in one preallocated slot stack on the model's device,
``[num_slots, numel]``, laid out by :class:`~loraroute.agents._lora_layout.SlotLayout`: each
slot holds every wrapped module's A (``[r, in]``) and pre-scaled B (``[out, r]``), zero-padded
to the layout rank, so adapters of different ranks mix freely. Slot 0 is all zeros and means
"no adapter". Moving an adapter into a slot is one contiguous copy of its packed host buffer
(pinned and asynchronous on CUDA, see :meth:`SlotLayers.load`).

Every targeted linear layer is wrapped once by :class:`SlotLoraLinear`. Which slot each batch
row uses is read from a shared :class:`AdapterContext`, so switching adapters is setting one
small list, not walking the model's modules as PEFT's ``set_adapter`` does. Modules that read
the same input (``q``/``k``/``v``, ``gate``/``up``) form a group whose LoRA deltas are computed
together, once per forward:

- ``"triton"`` (CUDA): tokens are grouped by adapter into tiles and one fused kernel per group
  does shrink and expand (:mod:`loraroute.agents._lora_triton`);
- ``"torch"`` on CUDA: a batch with one adapter does two small matmuls; a mixed batch
  gathers each row's matrices and uses batched matmuls (gather + bmm);
- ``"torch"`` on CPU: the input is shrunk against the A matrices of all the batch's adapters
  at once and a per-forward mask keeps each row's own block, so any mix costs one GEMM per
  group plus one per member (see :meth:`_Group._apply_cpu`).

On CUDA each module then adds its base product onto its delta in place (``addmm_``); on CPU
the LoRA is added onto the base product in place. Either way the LoRA costs no separate add.
:func:`read_adapter` parses a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) and :func:`check_compatible` refuses an adapter whose base
fingerprint, target modules or shapes do not match the loaded base.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import _lora_triton
from ._lora_layout import SlotLayout
from .errors import IncompatibleAdapterError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")

Backend = Literal["auto", "triton", "torch"]
TILE_M = 16  # tokens per Triton tile (the smallest tl.dot size)
TRITON_MAX_UNIFORM_TOKENS = 64  # above this, a one-adapter batch uses two plain matmuls
_USED = object()  # a group delta already handed to its module


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
        self.side: Any = None  # made by plan(), at _Group.side_priority
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

    def plan(self, version: int) -> _Plan:
        """A plan that reads these buffers (no host-to-device copy, no host-side grouping)."""
        n = len(self.slots)
        plan = _Plan(version, list(self.slots), None, self.device)
        if self.device.type == "cuda" and _Group.overlap:
            if self._priority != _Group.side_priority:  # graphs bake the stream in when captured
                self.side = torch.cuda.Stream(self.device, priority=_Group.side_priority)
                self._priority = _Group.side_priority
            plan.side = self.side
        plan._idx = self.idx[:n]
        plan._tiles[1] = (self.tok[: self.tiles * TILE_M], self.tile_slot[: self.tiles], self.tiles)
        return plan


class _Plan:
    """The adapter choice of one forward: slots per row, plus device-side index tensors."""

    __slots__ = (
        "version", "slots", "uniform", "device", "_idx", "_tiles", "_stream", "_masks", "side",
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

    def __init__(self) -> None:
        self.uniform: int | None = 0
        self.plan: _Plan | None = None
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
        """Order the current stream after every adapter copy issued so far."""
        if not self._pending:
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
            self.plan = _Plan(next(self._versions), list(slots), uniform, torch.device(device))

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
        self.plan = None if buffers is None else buffers.plan(next(self._versions))
        try:
            yield self
        finally:
            self.clear()

    @contextmanager
    def use(self, slots: list[int], device: torch.device | str = "cpu"):
        """Run forwards with ``slots`` (one per batch row); restores "no adapter" after."""
        self.set(slots, device)
        try:
            yield self
        finally:
            self.clear()


class SlotLoraLinear(nn.Module):
    """An ``nn.Linear`` plus its view of the slot stack; the slot per row comes from the context."""

    _layers: SlotLayers
    group: _Group
    _w: torch.Tensor | None
    _wt: torch.Tensor

    def __init__(self, base: nn.Linear, layers: SlotLayers, name: str):
        super().__init__()
        self.base = base
        self.name = name
        self.context = layers.context
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.member = 0
        object.__setattr__(self, "_layers", layers)  # a back reference, not a submodule
        object.__setattr__(self, "group", None)
        object.__setattr__(self, "_w", None)  # base.weight when _wt was made
        object.__setattr__(self, "_wt", None)  # base.weight.t(), cached

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight of projections
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def lora_A(self) -> torch.Tensor:
        """``[slots, r, in]`` view of the A matrices of every slot."""
        layers = self._layers
        if layers.layout is None or layers.stack is None:
            raise RuntimeError("no adapter was loaded yet")
        return layers.layout.a_view(layers.stack, self.name)

    @property
    def lora_B(self) -> torch.Tensor:
        """``[slots, out, r]`` view of the (pre-scaled) B matrices of every slot."""
        layers = self._layers
        if layers.layout is None or layers.stack is None:
            raise RuntimeError("no adapter was loaded yet")
        return layers.layout.b_view(layers.stack, self.name)

    @property
    def ranks(self) -> list[int]:
        return [r.get(self.name, 0) for r in self._layers.slot_ranks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.context.plan
        if plan is None:
            group = self.group
            if group.cpu and group.w_cat_t is not None:  # q/k/v as one GEMM here too
                return group._apply_cpu(self, x, None)
            return self.base(x)
        return self.group.apply(self, x, plan)


def decode_kernel_for(choice: str, tokens: int, rows: int, tiles: int) -> str:
    """The LoRA kernel pair of a graphed step: ``"tiles"`` or ``"rows"``.

    ``"auto"`` takes rows when at least half of the tiles' token places would be padding,
    that is when there are at least half as many tiles as rows (one token per row: decode).
    Measured on an H200 at batch 32, Llama-3-8B shapes
    (benchmarks/results/gpu_decode_kernels.json): tiles cost less with 1 and 8 distinct
    adapters, rows with 16 and 32. Tiles keep the tensor cores and read each adapter once;
    rows waste nothing on padding.
    """
    if choice == "tiles" or tokens != rows:
        return "tiles"
    if choice == "rows":
        return "rows"
    return "rows" if 2 * tiles >= rows else "tiles"


class _Group:
    """Modules that read the same input: their deltas are computed together, once per input.

    With a side stream in the plan (decode steps replayed as CUDA graphs), the Triton LoRA
    runs as two launches (on tiles, :class:`~loraroute.agents._lora_triton.SplitLauncher`,
    or one row per program, :class:`~loraroute.agents._lora_triton.RowLauncher`:
    :func:`decode_kernel_for`): shrink and expand into a delta buffer on that stream while
    the base GEMM runs on the main one, and one add joins them. The side stream has the
    highest priority, so its blocks take SMs as the GEMM frees them. On an H200 one stream
    costs about 20 us a layer more (benchmarks/results/gpu_decode_kernels_fine.md,
    ``_1stream``; ``LORAROUTE_LORA_OVERLAP=0`` turns the side stream off: the fused kernel
    runs before the GEMM, as in eager steps).
    """

    overlap = os.environ.get("LORAROUTE_LORA_OVERLAP", "1") != "0"
    # graphed decode: "tiles" (SplitLauncher, tiles of 16 tokens per adapter), "rows"
    # (RowLauncher, one row per program) or "auto" (see decode_kernel_for)
    decode_kernel = os.environ.get("LORAROUTE_LORA_DECODE_KERNEL", "auto")
    # the side stream's priority: below 0, its kernels take SMs as the GEMM frees them,
    # before the GEMM's next blocks (-100: the highest the device has; torch clamps); and
    # whether the GEMM is launched before the side stream's kernels (slower on an H200:
    # benchmarks/results/gpu_decode_priority.md)
    side_priority = int(os.environ.get("LORAROUTE_LORA_SIDE_PRIORITY", "-100"))
    gemm_first = os.environ.get("LORAROUTE_LORA_GEMM_FIRST", "0") == "1"

    def __init__(self, layers: SlotLayers, index: int, members: list[SlotLoraLinear]):
        self.layers = layers
        self.index = index
        self.members = members
        layout, stack = layers.layout, layers.stack
        if layout is None or stack is None:
            raise RuntimeError("a LoRA group needs the slot layout and stack first")
        self.r = layout.r
        self.in_features = members[0].in_features
        self.a = layout.group_a_view(stack, index)  # [slots, M * r, in]
        self.b = [layout.b_view(stack, m.name) for m in members]  # [slots, out, r] each
        self.outs = [m.out_features for m in members]
        self.total_out = sum(self.outs)
        self._spots = [
            (layout.spots[m.name].a_off, layout.spots[m.name].b_off, m.out_features)
            for m in members
        ]
        self._chunk = _lora_triton.chunk_width(self.total_out, self.in_features)
        self._launcher: _lora_triton.GroupLauncher | None = None  # built on first use
        self._split_launcher: _lora_triton.SplitLauncher | None = None  # graphed decode
        self._row_launcher: _lora_triton.RowLauncher | None = None  # graphed decode, rows
        for i, m in enumerate(members):
            m.member = i
            object.__setattr__(m, "group", self)
        self.x: torch.Tensor | None = None
        self.x2: torch.Tensor | None = None
        self._full: torch.Tensor | None = None  # [tokens, total_out]: deltas (CUDA), product (CPU)
        self.w_cat_t: torch.Tensor | None = None  # [in, total_out] when weights are fused
        self.based = False  # the deltas already hold the base product
        self.version = -1
        self.deltas: list[Any] = []
        self.cpu = layers.device.type == "cpu" and layers.backend == "torch"
        self._cols = list(itertools.accumulate([0] + self.outs[:-1]))  # members' first columns
        self._left = 0  # members still to serve from the current input
        self._shrunk: tuple[torch.Tensor, list[torch.Tensor], int] | None = None
        self._cat_key: tuple = ()
        self._cat: tuple[torch.Tensor, list[torch.Tensor], int] | None = None

    def apply(self, layer: SlotLoraLinear, x: torch.Tensor, plan: _Plan) -> torch.Tensor:
        if self.cpu:
            return self._apply_cpu(layer, x, plan)
        m = layer.member
        if self.x is x and self.version == plan.version and self.deltas[m] is not _USED:
            d = self.deltas[m]
        else:
            self.x2 = x.reshape(-1, x.shape[-1])
            self._full = None
            if (
                plan.side is not None
                and self.layers.backend == "triton"
                and (self.w_cat_t is not None or len(self.members) == 1)
            ):
                self.deltas = self._overlapped(self.x2, plan)
                self.x, self.version = x, plan.version
                self.deltas[m], d = _USED, self.deltas[m]
                if layer.base.bias is not None:
                    d.add_(layer.base.bias)
                return d.view(*x.shape[:-1], d.shape[-1])
            self.deltas = self.compute(self.x2, plan)
            self.x, self.version = x, plan.version
            # one GEMM for the whole group onto the group's delta buffer when the members'
            # weights are one concatenated tensor (see SlotLayers._fuse_weights)
            full, w_cat_t = self._full, self.w_cat_t
            self.based = full is not None and w_cat_t is not None
            if full is not None and w_cat_t is not None:
                full.addmm_(self.x2, w_cat_t)
            d = self.deltas[m]
        self.deltas[m] = _USED
        base = layer.base
        if d is None:
            return base(x)
        if not self.based:
            weight = base.weight
            if layer._w is not weight:  # the transposed view, made once per weight tensor
                object.__setattr__(layer, "_w", weight)  # not registered as a parameter
                object.__setattr__(layer, "_wt", weight.t())
            d.addmm_(self.x2, layer._wt)
        if base.bias is not None:
            d.add_(base.bias)
        return d.view(*x.shape[:-1], d.shape[-1])

    def _apply_cpu(
        self, layer: SlotLoraLinear, x: torch.Tensor, plan: _Plan | None
    ) -> torch.Tensor:
        """The CPU path (``plan`` is ``None`` for a batch on the base model alone).

        At decode sizes the cost is the number of operations, not arithmetic, so a mixed
        batch does not gather per-row matrices: the group's first member shrinks the input
        against the A matrices of all adapters of the batch at once (``[tokens, M * k * r]``)
        and zeroes, with a per-forward mask, the blocks of other rows' adapters. When the
        members' weights are one tensor (:meth:`SlotLayers._fuse_weights`) the whole group
        is then two GEMMs, base and LoRA expand (block-diagonal B), and each member returns
        its columns; otherwise each member adds ``t_m @ B_m`` onto its own base product.
        """
        version = 0 if plan is None else plan.version  # plans count from 1
        if self.x is not x or self.version != version:
            self.x, self.version = x, version
            self._left = len(self.members)
            x2 = x.reshape(-1, x.shape[-1])
            self._shrunk = None if plan is None else self._shrink_cpu(x2, plan)
            if self.w_cat_t is not None:
                whole = torch.mm(x2, self.w_cat_t)
                if self._shrunk is not None:
                    whole.addmm_(self._shrunk[0], self._shrunk[1][0])
                self._full = whole
        m = layer.member
        self._left -= 1
        full, shrunk = self._full, self._shrunk
        if self._left <= 0:  # every member served: keep no activations between forwards
            self.x = self._full = self._shrunk = None
        if self.w_cat_t is not None and full is not None:
            col = self._cols[m]
            return full[:, col : col + layer.out_features].view(*x.shape[:-1], -1)
        out = layer.base(x)
        if shrunk is not None:
            t, b_cats, width = shrunk
            out.view(-1, out.shape[-1]).addmm_(t[:, m * width : (m + 1) * width], b_cats[m])
        return out

    def _shrink_cpu(
        self, x2: torch.Tensor, plan: _Plan
    ) -> tuple[torch.Tensor, list[torch.Tensor], int] | None:
        """``(t, B per member, block width)`` for this forward, ``None`` when no row's adapter
        touches the group."""
        active = self.layers.active
        slots = tuple(s for s in plan.distinct() if self.index in active[s])
        if not slots:
            return None
        a_t, b_cats, width = self._weights_cpu(slots)
        t = torch.mm(x2, a_t)
        if plan.uniform is None:  # rows of other adapters, or on the base model
            per_row = x2.shape[0] // plan.rows
            t.mul_(plan.mask(slots, len(self.members), width // len(slots), per_row, t.dtype))
        return t, b_cats, width

    def _weights_cpu(self, slots: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """The group's A (``[in, M * k * r]``) and per-member B (``[k * r, out]``) for the
        adapters in ``slots``: views of the slot stack for one adapter; for several, one
        contiguous copy kept while the batch's adapters and their slots stay the same
        (decode steps), cut to the largest rank among them."""
        fused = self.w_cat_t is not None
        if len(slots) == 1 and not fused:
            s = slots[0]
            return self.a[s].t(), [b[s].t() for b in self.b], self.r
        layers = self.layers
        key = tuple((s, layers.slot_writes[s]) for s in slots)
        if self._cat is not None and self._cat_key == key:
            return self._cat
        names = [m.name for m in self.members]
        r = max(layers.slot_ranks[s].get(n, 0) for s in slots for n in names)
        members = len(self.members)
        a = torch.cat(
            [self.a[s].view(members, self.r, -1)[:, :r] for s in slots], 1
        )  # [M, k * r, in]: member-major, then slot, then rank
        a_t = a.reshape(members * len(slots) * r, -1).t()
        b_cats = [torch.cat([b[s][:, :r] for s in slots], 1).t() for b in self.b]
        width = len(slots) * r
        if fused:  # one block-diagonal [M * k * r, total_out]: member m's rows feed its columns
            block = a.new_zeros(members * width, self.total_out)
            for i, b_cat in enumerate(b_cats):
                col = self._cols[i]
                block[i * width : (i + 1) * width, col : col + self.outs[i]] = b_cat
            b_cats = [block]
        self._cat_key, self._cat = key, (a_t, b_cats, width)
        return self._cat

    def compute(self, x2: torch.Tensor, plan: _Plan) -> list[torch.Tensor | None]:
        """The LoRA delta of every member for the ``[tokens, in]`` input ``x2`` (``None`` where
        it is zero)."""
        layers = self.layers
        n = x2.shape[0]
        rows = plan.rows
        if n % rows:
            raise RuntimeError(
                f"a LoRA layer got {n} tokens for a batch of {rows} rows; the adapter context "
                f"must name one slot per batch row"
            )
        slot = plan.uniform
        if slot is not None and self.index not in layers.active[slot]:
            return [None] * len(self.members)
        backend = layers.backend
        if backend == "triton" and (slot is None or n <= TRITON_MAX_UNIFORM_TOKENS):
            return self._triton(x2, plan, n // rows)
        r = self.r
        if slot is not None:
            t = x2 @ self.a[slot].t()  # [n, M * r]
            return [t[:, i * r : (i + 1) * r] @ b[slot].t() for i, b in enumerate(self.b)]
        # mixed batch, gather + bmm: each row's own (zero-padded) matrices
        idx = plan.idx()
        x3 = x2.view(rows, n // rows, x2.shape[-1])
        t = torch.bmm(x3, self.a.index_select(0, idx).transpose(1, 2))  # [rows, L, M * r]
        out: list[torch.Tensor | None] = []
        for i, b in enumerate(self.b):
            bi = b.index_select(0, idx).transpose(1, 2)  # [rows, r, out]
            out.append(torch.bmm(t[..., i * r : (i + 1) * r], bi).view(n, -1))
        return out

    def _overlapped(self, x2: torch.Tensor, plan: _Plan) -> list[Any]:
        """Base product (main stream) plus Triton deltas (side stream), joined by one add;
        returns each member's columns of the sum. When the launcher ``adds``
        (``LORAROUTE_LORA_EXPAND_ADDS=1``), only the shrink runs beside the GEMM, and the
        expand runs after it, adding onto its product (no delta buffer, no add; slower on an
        H200)."""
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        stack = self.layers.stack
        if stack is None or _lora_triton.triton is None:
            raise RuntimeError("the Triton LoRA backend needs triton and a slot stack")
        main = torch.cuda.current_stream(x2.device)
        side = plan.side
        side.wait_stream(main)
        tok, tile_slot, tiles = plan.tiles(x2.shape[0] // plan.rows)
        kernel = decode_kernel_for(self.decode_kernel, x2.shape[0], plan.rows, tiles)
        launcher: Any
        if kernel == "rows":
            launcher = self._row_launcher
            if launcher is None:
                launcher = self._row_launcher = _lora_triton.RowLauncher(
                    stack, self._spots, r=self.r, device=x2.device
                )
            where: tuple = (plan.idx(),)
        else:
            launcher = self._split_launcher
            if launcher is None:
                launcher = self._split_launcher = _lora_triton.SplitLauncher(
                    stack, self._spots, r=self.r, block_m=TILE_M, device=x2.device
                )
            where = (tok, tile_slot, tiles)
        delta = None  # launcher.adds: the expand adds onto the GEMM's product
        if not launcher.adds:
            delta = torch.empty(x2.shape[0], self.total_out, dtype=x2.dtype, device=x2.device)
        w_t = self.w_cat_t if self.w_cat_t is not None else self.members[0].base.weight.t()
        out = torch.mm(x2, w_t) if self.gemm_first else None
        with torch.cuda.stream(side):
            part, split = launcher.shrink(x2, *where)
            if delta is not None:
                launcher.expand(delta, part, split, *where)
        if out is None:
            out = torch.mm(x2, w_t)
        main.wait_stream(side)
        if delta is None:
            launcher.expand(out, part, split, *where, add=True)
        else:
            out.add_(delta)
        self._full = out
        self.based = True
        return [out[:, col : col + width] for col, width in zip(self._cols, self.outs, strict=True)]

    def _triton(self, x2: torch.Tensor, plan: _Plan, per_row: int) -> list[torch.Tensor | None]:
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        tok, tile_slot, tiles = plan.tiles(per_row)
        launcher = self._launcher
        if launcher is None:
            stack = self.layers.stack
            if stack is None or _lora_triton.triton is None:
                raise RuntimeError("the Triton LoRA backend needs triton and a slot stack")
            table = _lora_triton.chunk_table(self._spots, self._chunk, x2.device)
            launcher = self._launcher = _lora_triton.GroupLauncher(
                stack, table, r=self.r, chunk=self._chunk, block_m=TILE_M
            )
        delta = torch.empty(x2.shape[0], self.total_out, dtype=x2.dtype, device=x2.device)
        launcher(x2, delta, tok, tile_slot, tiles, self.total_out, plan.stream())
        self._full = delta
        if len(self.outs) == 1:
            return [delta]
        out: list[torch.Tensor | None] = []
        col = 0
        for width in self.outs:
            out.append(delta[:, col : col + width])
            col += width
        return out


@dataclass
class AdapterWeights:
    """A PEFT LoRA adapter read into memory: per-module (A, B, scaling)."""

    path: Path
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(repr=False)
    base_model_name_or_path: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size()
            for a, b, _ in self.modules.values()
        )


def folder_digest(folder: Path) -> str:
    """``sha256:<hex>`` over the adapter's config and weights (for plain folders)."""
    folder = Path(folder)
    return _content_digest(
        (folder / ADAPTER_CONFIG).read_bytes(), (folder / ADAPTER_WEIGHTS).read_bytes()
    )


def _content_digest(config: bytes, weights: bytes) -> str:
    """:func:`folder_digest` of bytes already in memory (read once, hashed and parsed)."""
    h = hashlib.sha256(b"loraroute-adapter-folder-v1\0")
    for name, data in ((ADAPTER_CONFIG, config), (ADAPTER_WEIGHTS, weights)):
        h.update(name.encode() + b"\0")
        h.update(data)
    return "sha256:" + h.hexdigest()


def _pattern_value(patterns: dict, module: str, default):
    # PEFT matches pattern keys as a suffix of the module name, or as a regex.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: Path | str, *, digest: str | None = None) -> AdapterWeights:
    """Read a PEFT LoRA folder; refuses features our layer does not implement.

    ``digest`` is the version digest when the caller already knows it (the registry verified
    the files when it wrote its checkout); without it the folder's content is hashed, from
    the same bytes that are parsed, so the file is read once.

    Example::

        >>> w = read_adapter("out/legal")  # doctest: +SKIP
        >>> sorted(w.modules)[:1]  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj']
    """
    from safetensors.torch import load

    folder = Path(folder)
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise IncompatibleAdapterError(
            f"adapter folder {str(folder)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
            f"save it with PeftModel.save_pretrained (safe_serialization=True)"
        )
    cfg_bytes = cfg_path.read_bytes()
    cfg = json.loads(cfg_bytes)
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise IncompatibleAdapterError(
            f"adapter {str(folder)!r} has peft_type {peft_type!r}; only LORA adapters are served"
        )
    unsupported = {
        "use_dora": bool(cfg.get("use_dora")),
        "bias": cfg.get("bias", "none") not in (None, "none"),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "modules_to_save": bool(cfg.get("modules_to_save")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise IncompatibleAdapterError(
            f"adapter {str(folder)!r} uses {', '.join(bad)}, which the loraroute runtime does not "
            f"serve; retrain with plain LoRA (no DoRA, bias='none', no modules_to_save)"
        )
    r_default = int(cfg.get("r", 8))
    alpha_default = float(cfg.get("lora_alpha", r_default))
    rslora = bool(cfg.get("use_rslora"))
    # one read into memory, then parsed: cheaper than load_file's memory map for a few MB
    data = w_path.read_bytes()
    if digest is None:
        digest = _content_digest(cfg_bytes, data)
    tensors = load(data)
    del data
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        m = _KEY_RE.match(name)
        if m is None:
            raise IncompatibleAdapterError(
                f"adapter {str(folder)!r} has tensor {key!r}, which is not a LoRA A/B weight of a "
                f"linear layer; only linear LoRA layers are served"
            )
        parts.setdefault(m["module"], {})[m["which"]] = tensor
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise IncompatibleAdapterError(
                f"adapter {str(folder)!r} has only lora_{''.join(ab)} for module {module!r}"
            )
        r = ab["A"].shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, alpha_default))
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        modules[module] = (ab["A"], ab["B"], scaling)
    if not modules:
        raise IncompatibleAdapterError(f"adapter {str(folder)!r} holds no LoRA weights")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return AdapterWeights(
        path=folder,
        digest=digest,
        rank=max(a.shape[0] for a, _, _ in modules.values()),
        alpha=alpha_default,
        target_modules=sorted(targets) or sorted({m.rsplit(".", 1)[-1] for m in modules}),
        modules=modules,
        base_model_name_or_path=cfg.get("base_model_name_or_path"),
    )


def check_compatible(
    weights: AdapterWeights,
    model: nn.Module,
    *,
    label: str,
    base_fingerprint: str,
    recorded_fingerprint: str | None,
    named: Mapping[str, nn.Module] | None = None,
) -> None:
    """Raise :class:`IncompatibleAdapterError` unless ``weights`` fit ``model``.

    ``named`` is ``dict(model.named_modules())`` when the caller keeps one (walking the
    model's modules costs about as much as the rest of the check)."""
    if recorded_fingerprint and recorded_fingerprint != base_fingerprint:
        raise IncompatibleAdapterError(
            f"adapter {label!r} was trained on base {recorded_fingerprint}, but the loaded base is "
            f"{base_fingerprint}; load the matching base model or retrain the adapter on this one"
        )
    if named is None:
        named = dict(model.named_modules())
    for module, (a, b, _) in weights.modules.items():
        layer = named.get(module)
        if isinstance(layer, SlotLoraLinear):
            layer = layer.base
        if layer is None:
            raise IncompatibleAdapterError(
                f"adapter {label!r} targets module {module!r}, which the loaded base "
                f"({base_fingerprint}) does not have; it was made for another architecture"
            )
        if not isinstance(layer, nn.Linear):
            raise IncompatibleAdapterError(
                f"adapter {label!r} targets {module!r}, a {type(layer).__name__}; only nn.Linear "
                f"layers are served"
            )
        want_a, want_b = (a.shape[0], layer.in_features), (layer.out_features, b.shape[1])
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b or a.shape[0] != b.shape[1]:
            raise IncompatibleAdapterError(
                f"adapter {label!r} has shapes A{tuple(a.shape)} B{tuple(b.shape)} for {module!r}, "
                f"but the loaded base ({base_fingerprint}) needs A{want_a} B{want_b}; it was made "
                f"for another base model"
            )


@dataclass
class PackedAdapter:
    """One adapter packed into a slot layout: the unit the CPU tier keeps and copies to a slot.

    ``flat`` is a ``[layout.numel]`` host tensor (pinned when the engine runs on CUDA);
    ``ranks`` is the LoRA rank per module (modules the adapter does not target are absent).
    """

    flat: torch.Tensor = field(repr=False)
    layout: SlotLayout = field(repr=False)
    ranks: dict[str, int]

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` on CUDA when Triton is installed, else ``torch``."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"lora_backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    reason = _lora_triton.unavailable_reason(device)
    if backend == "triton" and reason is not None:
        raise ValueError(f"lora_backend='triton' is not available: {reason}; use 'torch'")
    if backend == "auto":
        return "triton" if reason is None and device.type == "cuda" else "torch"
    return backend


class SlotLayers:
    """The slot stack of one model and the :class:`SlotLoraLinear` wrappers that read it.

    Modules are wrapped when the first adapter that targets them arrives; the stack is
    re-laid out (a rare reallocation that keeps every loaded adapter) when an adapter brings a
    new module or a larger rank than the layout has.
    """

    def __init__(self, model: nn.Module, num_slots: int, r_max: int = 16, *, backend: str = "auto"):
        self.model = model
        self.context = AdapterContext()
        self.num_slots = num_slots
        self.r_max = r_max
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self._backend = resolve_backend(backend, self.device)
        self.layers: dict[str, SlotLoraLinear] = {}
        # the model's modules by name as loaded (wrapping keeps each base nn.Linear), for
        # compatibility checks without walking the model at every load
        self.named_modules: dict[str, nn.Module] = dict(model.named_modules())
        self.layout: SlotLayout | None = None
        self.stack: torch.Tensor | None = None  # [num_slots, layout.numel]
        # per module, its A ([slots, r, in]) and B ([slots, out, r]) views of the stack
        self._views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.groups: list[_Group] = []
        self.slot_ranks: list[dict[str, int]] = [{} for _ in range(num_slots)]
        self.active: list[set[int]] = [set() for _ in range(num_slots)]  # groups with a rank
        self.slot_writes = [0] * num_slots  # bumped at every write into a slot (cache keys)
        self._copy_stream: Any = None
        self._fused: dict[tuple[str, ...], torch.Tensor] = {}  # group names -> concat weight

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = resolve_backend(value, self.device)
        self.context.epoch += 1
        if self.layout is not None and self._backend == "triton":
            self._relayout(set(self.layout.spots), self.layout.r)

    def _rank_for(self, r: int) -> int:
        r = max(r, self.r_max, 1)
        if self._backend == "triton":  # tl.dot and tl.arange want a power of two >= 16
            r = max(16, 1 << (r - 1).bit_length())
        return r

    # -- layout ----------------------------------------------------------------------------
    def ensure(self, weights: AdapterWeights) -> None:
        """Make the layout cover ``weights`` (wrapping modules / growing the rank as needed).

        Callers hold the engine's model lock: a re-layout swaps the stack under the model.
        """
        layout = self.layout
        r = self._rank_for(weights.rank)
        if layout is not None and layout.r >= r and all(n in layout for n in weights.modules):
            return
        names = set(weights.modules) | (set(layout.spots) if layout else set())
        self._relayout(names, max(r, layout.r if layout else 0))

    def _relayout(self, names: set[str], r: int) -> None:
        r = self._rank_for(r)
        old_layout, old_stack = self.layout, self.stack
        if old_layout is not None and old_layout.r == r and set(old_layout.spots) == names:
            return
        named = dict(self.model.named_modules())
        ordered = [n for n in named if n in names or n in self.layers]
        modules = []
        for name in ordered:
            base = self.layers[name].base if name in self.layers else named[name]
            modules.append((name, base.in_features, base.out_features))
        layout = SlotLayout(modules, r)
        self._sync_copies()
        stack = torch.zeros(self.num_slots, layout.numel, dtype=self.dtype, device=self.device)
        if old_layout is not None and old_stack is not None:
            layout.copy_from(old_layout, old_stack, stack)
        for name, _, _ in modules:
            self._wrap(name)
        self.layout, self.stack = layout, stack
        self.context.epoch += 1
        self._views = {
            name: (layout.a_view(stack, name), layout.b_view(stack, name)) for name in layout.spots
        }
        self.groups = [
            _Group(self, g, [self.layers[n] for n in members])
            for g, members in enumerate(layout.groups)
        ]
        for group in self.groups:
            group.w_cat_t = self._fuse_weights(group)
        self._refresh_active()
        logger.info(
            "LoRA slot layout: %d modules in %d groups, rank %d, %d slots, %.1f MiB",
            len(modules),
            len(self.groups),
            r,
            self.num_slots,
            self.slot_bytes() / 2**20,
        )

    def _fuse_weights(self, group: _Group) -> torch.Tensor | None:
        """Make the group's base weights rows of one tensor; returns its transpose.

        ``q``/``k``/``v`` (or ``gate``/``up``) then cost one GEMM instead of three (two) when
        the Triton path or the CPU path computes the group together. Each module keeps a
        weight that is a view into the concatenated tensor, so nothing is stored twice and
        ``state_dict`` is unchanged. Single modules, and the torch path on CUDA, are left
        alone.
        """
        if len(group.members) < 2 or not (self._backend == "triton" or group.cpu):
            return None
        bases = [m.base for m in group.members]
        if group.cpu and any(b.bias is not None for b in bases):
            return None  # the CPU group GEMM adds no biases
        weights = [b.weight for b in bases]
        if any(w.dtype != weights[0].dtype or w.device != weights[0].device for w in weights):
            return None
        cat = self._fused.get(tuple(m.name for m in group.members))
        offset = 0
        if cat is not None:  # fused before a re-layout: still the same tensors?
            for w in weights:
                expected = cat.data_ptr() + offset * cat.stride(0) * cat.element_size()
                if w.data_ptr() != expected:
                    cat = None
                    break
                offset += w.shape[0]
        if cat is None:
            with torch.no_grad():
                cat = torch.cat([w.detach() for w in weights], 0)
            offset = 0
            for b, w in zip(bases, weights, strict=True):
                rows = w.shape[0]
                b.weight = nn.Parameter(cat[offset : offset + rows], requires_grad=False)
                offset += rows
            self._fused[tuple(m.name for m in group.members)] = cat
        return cat.t()

    def _wrap(self, name: str) -> SlotLoraLinear:
        layer = self.layers.get(name)
        if layer is not None:
            return layer
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child)
        layer = SlotLoraLinear(base, self, name)
        setattr(parent, child, layer)
        self.layers[name] = layer
        return layer

    def _refresh_active(self) -> None:
        layout = self.layout
        for slot, ranks in enumerate(self.slot_ranks):
            self.active[slot] = (
                {layout.spots[n].group for n, r in ranks.items() if r and n in layout.spots}
                if layout is not None
                else set()
            )

    # -- adapters in and out of slots ------------------------------------------------------
    def pack(self, weights: AdapterWeights, *, pin: bool | None = None) -> PackedAdapter:
        """Pack ``weights`` into a host buffer in the current layout (call :meth:`ensure` first)."""
        layout = self.layout
        if layout is None or not layout.covers(weights):
            raise RuntimeError(
                "SlotLayers.pack needs a layout that covers the adapter; call ensure"
            )
        if pin is None:
            pin = self.device.type == "cuda"
        flat = torch.empty(layout.numel, dtype=self.dtype, pin_memory=pin)
        ranks = layout.pack(weights, flat)
        return PackedAdapter(flat=flat, layout=layout, ranks=ranks)

    def repack(self, packed: PackedAdapter) -> PackedAdapter:
        """``packed`` in the current layout (itself when it already is)."""
        layout = self.layout
        if packed.layout is layout or layout is None:
            return packed
        flat = torch.empty(layout.numel, dtype=self.dtype, pin_memory=packed.flat.is_pinned())
        layout.copy_from(packed.layout, packed.flat, flat)
        return PackedAdapter(flat=flat, layout=layout, ranks=dict(packed.ranks))

    def load(self, slot: int, packed: PackedAdapter) -> PackedAdapter:
        """Copy ``packed`` into ``slot``; returns it in the current layout.

        On CUDA the copy is one asynchronous host-to-device transfer from pinned memory on a
        side stream, so it overlaps running decode steps; the next forward waits for it
        (:meth:`AdapterContext.set`). The slot must not be used by running rows.
        """
        packed = self.repack(packed)
        if self.stack is None:
            raise RuntimeError("no slot layout yet; call ensure() with the adapter first")
        dst = self.stack[slot]
        if self.device.type == "cuda":
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(device=self.device)
            stream = self._copy_stream
            # after whatever the compute stream queued on this memory (e.g. a fresh stack's fill)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                dst.copy_(packed.flat, non_blocking=packed.flat.is_pinned())
                event = torch.cuda.Event()
                event.record(stream)
            self.context.add_pending(event)
        else:
            dst.copy_(packed.flat)
        self.slot_ranks[slot] = dict(packed.ranks)
        self._refresh_slot(slot)
        return packed

    def load_weights(self, slot: int, weights: AdapterWeights) -> None:
        """Copy ``weights`` straight into ``slot``, without a packed host buffer (call
        :meth:`ensure` first).

        The CPU path: a host buffer would only be copied once more. Each module's A and
        scaled B go to their places in the slot; the slot's previous contents need zeroing
        only where the old adapter reached beyond the new one (a slot holds zeros outside
        the ranks recorded in ``slot_ranks``), so same-shaped adapters zero nothing.
        """
        layout, views = self.layout, self._views
        if layout is None or not layout.covers(weights):
            raise RuntimeError(
                "SlotLayers.load_weights needs a layout that covers the adapter; call ensure"
            )
        self._sync_copies()
        old = self.slot_ranks[slot]
        ranks: dict[str, int] = {}
        for name, (a, b, scaling) in weights.modules.items():
            r = a.shape[0]
            a_all, b_all = views[name]
            a_all[slot, :r].copy_(a)
            if b.dtype != torch.float32:  # scaled in float32, as SlotLayout.pack does
                b = b.float()
            torch.mul(b, scaling, out=b_all[slot, :, :r])
            stale = old.get(name, 0)
            if stale > r:
                a_all[slot, r:stale].zero_()
                b_all[slot, :, r:stale].zero_()
            ranks[name] = r
        for name, stale in old.items():
            if name not in ranks and name in views:
                views[name][0][slot, :stale].zero_()
                views[name][1][slot, :, :stale].zero_()
        self.slot_ranks[slot] = ranks
        self._refresh_slot(slot)

    def _refresh_slot(self, slot: int) -> None:
        self.slot_writes[slot] += 1
        layout = self.layout
        ranks = self.slot_ranks[slot]
        self.active[slot] = {
            layout.spots[n].group for n, r in ranks.items() if r and layout and n in layout.spots
        }

    def _sync_copies(self) -> None:
        if self._copy_stream is not None:
            self._copy_stream.synchronize()

    def write(self, slot: int, weights: AdapterWeights) -> None:
        """Copy ``weights`` into ``slot`` (wrapping modules / re-laying out as needed)."""
        self.ensure(weights)
        self.load(slot, self.pack(weights, pin=False))

    def clear(self, slot: int) -> None:
        if self.stack is not None:
            self._sync_copies()
            self.stack[slot].zero_()
        self.slot_ranks[slot] = {}
        self.active[slot] = set()
        self.slot_writes[slot] += 1

    def slot_bytes(self) -> int:
        """Memory held by the slot stack (preallocated, independent of how many are used)."""
        return 0 if self.stack is None else self.stack.numel() * self.stack.element_size()

    def adapter_bytes(self) -> int:
        """Bytes of one packed adapter (one slot) in the current layout."""
        if self.layout is None or self.stack is None:
            return 0
        return self.layout.numel * self.stack.element_size()
