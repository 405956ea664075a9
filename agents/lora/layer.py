"""The LoRA layer: an ``nn.Linear`` wrapped to add each batch row's own adapter delta.

Every targeted linear layer is wrapped once by :class:`SlotLoraLinear`, which reads the slot of
each row from the shared :class:`~.plan.AdapterContext` (switching adapters is setting one small
list, not walking the model's modules). Modules that read the same input (``q``/``k``/``v``,
``gate``/``up``) form a :class:`LoraGroup` whose deltas are computed together, once a forward:

- ``"triton"`` (CUDA): tokens grouped by adapter, shrink and expand in Triton (:mod:`.launchers`);
- ``"torch"`` on CUDA: one adapter, two small matmuls; a mixed batch, gather + bmm;
- ``"torch"`` on CPU: the input is shrunk against the A matrices of all the batch's adapters at
  once and a per-forward mask keeps each row's own block (:meth:`LoraGroup._apply_cpu`).

On CUDA each module adds its base product onto its delta in place (``addmm_``); on CPU the LoRA
is added onto the base product in place; either way the LoRA costs no separate add. In graphed
decode steps the delta runs beside the base GEMM and one add joins them, unless the caller
takes the delta (:func:`take_delta`) to add inside its next fused op (the paged engine).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Protocol

import torch
from torch import nn

from .config import LoraKernelConfig
from .launchers import (
    GroupLauncher,
    L2Prefetcher,
    RowLauncher,
    SplitLauncher,
    chunk_table,
    chunk_width,
    triton,
)
from .layout import SlotLayout
from .plan import TILE_M, AdapterContext, ForwardPlan

TRITON_MAX_UNIFORM_TOKENS = 64  # above this, a one-adapter batch uses two plain matmuls
# projections whose product attention reads next (L2 hints beside attention)
ATTENTION_INPUTS = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj"})
_USED = object()  # a group delta already handed to its module
# torch warns once that its SM carveout is experimental (carved_mm checks it is there)
warnings.filterwarnings("ignore", message="Setting the SM carveout", category=UserWarning)


def carved_mm(x: torch.Tensor, w_t: torch.Tensor, carveout: int) -> torch.Tensor:
    """``x @ w_t``; with ``carveout`` > 0, by cuBLASLt told to use all but that many SMs (its
    SM count target), leaving them to the kernels of another stream (a plain product where
    the device has no more than twice that many SMs)."""
    if carveout <= 0 or not hasattr(torch._C, "_set_sm_carveout_experimental"):
        return torch.mm(x, w_t)
    if torch.cuda.get_device_properties(x.device).multi_processor_count <= 2 * carveout:
        return torch.mm(x, w_t)
    library = torch.backends.cuda.preferred_blas_library()
    before = torch._C._get_sm_carveout_experimental()
    torch.backends.cuda.preferred_blas_library("cublaslt")  # the SM target is cuBLASLt's
    torch._C._set_sm_carveout_experimental(carveout)
    try:
        return torch.mm(x, w_t)
    finally:
        torch._C._set_sm_carveout_experimental(before)
        torch.backends.cuda.preferred_blas_library(library)


class SlotStore(Protocol):
    """What a layer reads of its :class:`~.slots.SlotLayers`: the slot stack and its layout,
    which slots hold which modules, and the kernels' options."""

    context: AdapterContext
    config: LoraKernelConfig
    layout: SlotLayout | None
    stack: torch.Tensor | None
    scales: torch.Tensor | None  # int8 slots' rank scales
    device: torch.device
    slot_ranks: list[dict[str, int]]
    active: list[set[int]]
    slot_writes: list[int]

    @property
    def backend(self) -> str: ...


class SlotLoraLinear(nn.Module):
    """An ``nn.Linear`` plus its view of the slot stack; the slot per row comes from the context."""

    _layers: SlotStore
    group: LoraGroup
    _w: torch.Tensor | None
    _wt: torch.Tensor

    def __init__(self, base: nn.Linear, layers: SlotStore, name: str):
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


def take_delta(module: nn.Module) -> torch.Tensor | None:
    """The LoRA delta of ``module``'s last forward, when that forward left it to the caller
    (:attr:`~.plan.ForwardPlan.defer`) to add inside the op that reads the product next;
    ``None`` when there is none to add (no adapter, not deferred, or a plain module)."""
    if not isinstance(module, SlotLoraLinear) or module.group is None:
        return None
    return module.group.take(module.member)


def decode_kernel_for(choice: str, tokens: int, rows: int, tiles: int) -> str:
    """The LoRA kernel pair of a graphed step: ``"tiles"`` or ``"rows"``.

    ``"auto"`` takes rows when at least half of the tiles' token places would be padding,
    that is when there are at least half as many tiles as rows (one token per row: decode):
    tiles keep the tensor cores and read each adapter once, rows waste nothing on padding
    (benchmarks/results/gpu_decode_kernels.md).
    """
    if choice == "tiles" or tokens != rows:
        return "tiles"
    if choice == "rows":
        return "rows"
    return "rows" if 2 * tiles >= rows else "tiles"


class LoraGroup:
    """Modules that read the same input: their deltas are computed together, once per input.

    With a side stream in the plan (decode steps replayed as CUDA graphs), the Triton LoRA
    runs as two launches (:class:`SplitLauncher` on tiles or :class:`RowLauncher` on rows,
    :func:`decode_kernel_for`): shrink and expand into a delta buffer on that stream while
    the base GEMM runs on the main one, and one add joins them; the side stream's priority
    lets its blocks take SMs as the GEMM frees them (``config.overlap`` off: the fused
    kernel runs before the GEMM, as in eager steps; benchmarks/results/gpu_decode_*.md).
    """

    # the next group's LoRA kernels wait for the L2 hints of the group before them (off:
    # only the end of the forward joins the hint stream; benchmarks compare the two)
    join_hints = True

    def __init__(self, layers: SlotStore, index: int, members: list[SlotLoraLinear]):
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
            (
                layout.spots[m.name].a_off,
                layout.spots[m.name].b_off,
                m.out_features,
                layout.spots[m.name].s_off,
            )
            for m in members
        ]
        self.scales = layers.scales if layout.quantized else None
        self._chunk = chunk_width(self.total_out, self.in_features)
        self._launcher: GroupLauncher | None = None  # built on first use
        self._split_launcher: SplitLauncher | None = None  # graphed decode
        self._row_launcher: RowLauncher | None = None  # graphed decode, rows
        self._prefetcher: L2Prefetcher | None = None  # graphed decode, config.l2_prefetch
        # where the group's region of a slot ends, and the next group's (groups are laid
        # out in model order, the order a forward runs them)
        ends = [*layout.group_a_off[index + 1 : index + 3], layout.numel, layout.numel]
        self._end, self._next_end = ends[0], ends[1]
        # q/k/v: attention runs after this group's GEMM (config.l2_prefetch_at "attention")
        self.feeds_attention = any(m.name.rsplit(".", 1)[-1] in ATTENTION_INPUTS for m in members)
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
        self._columns = list(zip(self._cols, self.outs, strict=True))  # (first, width) each
        self._left = 0  # members still to serve from the current input
        self._shrunk: tuple[torch.Tensor, list[torch.Tensor], int] | None = None
        self._cat_key: tuple = ()
        self._cat: tuple[torch.Tensor, list[torch.Tensor], int] | None = None
        # a deferred forward (plan.defer): each member's delta, for take_delta, and the side
        # stream the first taker waits for
        self._pending: list[torch.Tensor | None] = []
        self._pending_version = -1
        self._join: Any = None

    def apply(self, layer: SlotLoraLinear, x: torch.Tensor, plan: ForwardPlan) -> torch.Tensor:
        if self.cpu:
            return self._apply_cpu(layer, x, plan)
        m = layer.member
        if self.x is x and self.version == plan.version and self.deltas[m] is not _USED:
            d = self.deltas[m]
        else:
            self.x2 = x.reshape(-1, x.shape[-1])
            self._full = None
            if (
                plan.graphed
                and self.layers.config.overlap
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
        self, layer: SlotLoraLinear, x: torch.Tensor, plan: ForwardPlan | None
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
        self, x2: torch.Tensor, plan: ForwardPlan
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

    def compute(self, x2: torch.Tensor, plan: ForwardPlan) -> list[torch.Tensor | None]:
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
        if backend == "triton" and (
            slot is None or n <= TRITON_MAX_UNIFORM_TOKENS or self.scales is not None
        ):  # int8 slots: the kernels dequantize
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

    def _overlapped(self, x2: torch.Tensor, plan: ForwardPlan) -> list[Any]:
        """Base product (main stream) plus Triton deltas (side stream), joined by one add;
        returns each member's columns of the sum. When the launcher ``adds``
        (``config.expand_adds``), only the shrink runs beside the GEMM, and the expand runs
        after it, adding onto its product (no delta buffer, no add). When the caller adds
        the deltas itself (``plan.defer``), neither the join nor the add happens here: the
        columns are the base product's, and :meth:`take` hands each member its delta.
        Without a side stream (Triton's interpreter on CPU) the launches run in order."""
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        stack = self.layers.stack
        if stack is None or triton is None:
            raise RuntimeError("the Triton LoRA backend needs triton and a slot stack")
        self._pending = []
        side = plan.side
        main = torch.cuda.current_stream(x2.device) if side is not None else None
        if side is not None:
            side.wait_stream(main)
            if plan.fetch_open and self.join_hints:  # the hints of the group before
                side.wait_stream(plan.fetch)
                plan.fetch_open = False
        tok, tile_slot, tiles = plan.tiles(x2.shape[0] // plan.rows)
        config = self.layers.config
        kernel = decode_kernel_for(config.decode_kernel, x2.shape[0], plan.rows, tiles)
        launcher: Any
        if kernel == "rows":
            launcher = self._row_launcher
            if launcher is None:
                launcher = self._row_launcher = RowLauncher(
                    stack, self._spots, r=self.r, device=x2.device, config=config,
                    scales=self.scales,
                )  # fmt: skip
            where: tuple = (plan.idx(),)
        else:
            launcher = self._split_launcher
            if launcher is None:
                launcher = self._split_launcher = SplitLauncher(
                    stack, self._spots, r=self.r, block_m=TILE_M, device=x2.device,
                    config=config, scales=self.scales,
                )  # fmt: skip
            where = (tok, tile_slot, tiles)
        delta = None  # launcher.adds: the expand adds onto the GEMM's product
        if not launcher.adds:
            delta = torch.empty(x2.shape[0], self.total_out, dtype=x2.dtype, device=x2.device)
        w_t = self.w_cat_t if self.w_cat_t is not None else self.members[0].base.weight.t()
        carveout = config.gemm_sm_carveout if side is not None else 0
        out = carved_mm(x2, w_t, carveout) if config.gemm_first else None
        with torch.cuda.stream(side):
            part, split = launcher.shrink(x2, *where)
            if delta is not None:
                launcher.expand(delta, part, split, *where)
        hint_at = config.l2_prefetch_at if plan.fetch is not None else None
        if hint_at is not None:
            hint_where = (plan.idx(), plan.rows) if kernel == "rows" else (tile_slot, tiles)
        if hint_at == "each":
            self.prefetch_ahead(plan, *hint_where)
        if out is None:
            out = carved_mm(x2, w_t, carveout)
        if hint_at == "attention" and self.feeds_attention:
            plan.fetch.wait_stream(main)  # after the GEMM: beside the attention kernels
            self.prefetch_ahead(plan, *hint_where)
        self._full = out
        self.based = True
        columns = self._columns
        if delta is not None and plan.defer:
            self._pending = [delta[:, col : col + width] for col, width in columns]
            self._pending_version, self._join = plan.version, side
            return [out[:, col : col + width] for col, width in columns]
        if main is not None:
            main.wait_stream(side)
        if delta is None:
            launcher.expand(out, part, split, *where, add=True)
        else:
            out.add_(delta)
        return [out[:, col : col + width] for col, width in columns]

    def ahead(self, fetched: int) -> tuple[int, int]:
        """The slot elements ``[start, stop)`` :meth:`prefetch_ahead` hints when this forward
        has hinted up to ``fetched``: the next group whole and ``config.l2_prefetch`` KiB
        past this group's end, less what was hinted, within the slot (empty: nothing)."""
        config, stack, layout = self.layers.config, self.layers.stack, self.layers.layout
        if stack is None or layout is None or config.l2_prefetch <= 0:
            return 0, 0
        ahead = config.l2_prefetch * 1024 // stack.element_size()
        stop = min(layout.numel, max(self._next_end, self._end + ahead))
        return max(self._end, fetched), stop

    def prefetch_ahead(self, plan: ForwardPlan, slots: torch.Tensor, count: int) -> None:
        """Hint into L2, on ``plan.fetch`` after the side stream's kernels issued so far, the
        slot regions of the groups after this one that this forward has not hinted yet: the
        next group whole and ``config.l2_prefetch`` KiB past this group's end, of each of the
        first ``count`` ``slots``. The next group's side stream joins it."""
        stack = self.layers.stack
        start, stop = self.ahead(plan.fetched)
        if stack is None or stop <= start:
            return
        prefetcher = self._prefetcher
        if prefetcher is None or prefetcher.flat is not stack:
            prefetcher = self._prefetcher = L2Prefetcher(stack)
        plan.fetch.wait_stream(plan.side)
        with torch.cuda.stream(plan.fetch):
            prefetcher(slots, count, start, stop, last=self.layers.config.l2_evict_last)
        plan.fetched = stop
        plan.fetch_open = True

    def take(self, member: int) -> torch.Tensor | None:
        """Member ``member``'s delta that a deferred forward of the current plan left
        (``None``: none, or already added), once; the current stream is ordered after the
        side stream that computed it."""
        plan = self.layers.context.plan
        if not self._pending or plan is None or plan.version != self._pending_version:
            self._pending = []
            return None
        delta, self._pending[member] = self._pending[member], None
        if delta is not None and self._join is not None:
            torch.cuda.current_stream(delta.device).wait_stream(self._join)
            self._join = None
        if all(d is None for d in self._pending):
            self._pending = []
        return delta

    def _triton(
        self, x2: torch.Tensor, plan: ForwardPlan, per_row: int
    ) -> list[torch.Tensor | None]:
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        tok, tile_slot, tiles = plan.tiles(per_row)
        launcher = self._launcher
        if launcher is None:
            stack = self.layers.stack
            if stack is None or triton is None:
                raise RuntimeError("the Triton LoRA backend needs triton and a slot stack")
            table = chunk_table(self._spots, self._chunk, x2.device)
            launcher = self._launcher = GroupLauncher(
                stack,
                table,
                r=self.r,
                chunk=self._chunk,
                block_m=TILE_M,
                config=self.layers.config,
                scales=self.scales,
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
