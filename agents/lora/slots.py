"""The slot stack of one model and the layers that read it.

All resident adapters live in one preallocated stack on the model's device, ``[num_slots,
numel]``, laid out by :class:`~.layout.SlotLayout`: each slot holds every wrapped module's A and
pre-scaled B, zero-padded to the layout rank, so adapters of different ranks mix freely. Slot 0
is all zeros and means "no adapter". Moving an adapter into a slot is one contiguous copy of its
packed host buffer (pinned and asynchronous on CUDA, :meth:`SlotLayers.load`).

With ``adapter_weights="int8"`` the stack holds int8 values and a ``[num_slots, n_scales]``
float32 tensor of rank scales beside it (:mod:`.layout`): half the memory and half the bytes
a decode step reads per adapter, read by the Triton kernels only.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .config import LoraKernelConfig
from .fuse import fuse_rows
from .launchers import unavailable_reason
from .layer import LoraGroup, SlotLoraLinear
from .layout import PackedAdapter, SlotLayout
from .plan import AdapterContext
from .weights import AdapterWeights

logger = logging.getLogger(__name__)


def resolve_backend(backend: str, device: torch.device, *, interpret: bool = False) -> str:
    """``auto`` -> ``triton`` on CUDA when Triton is installed, else ``torch``."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"lora_backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    reason = unavailable_reason(device, interpret=interpret)
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

    def __init__(
        self,
        model: nn.Module,
        num_slots: int,
        r_max: int = 16,
        *,
        backend: str | None = None,
        config: LoraKernelConfig | None = None,
        adapter_weights: str = "model",
    ):
        """``config`` holds the kernels' options (its ``backend`` unless ``backend`` is
        given); ``adapter_weights``: ``"model"`` (the model's dtype) or ``"int8"``."""
        self.config = config = config or LoraKernelConfig()
        if backend is not None:
            config.backend = backend  # type: ignore[assignment]
        self.model = model
        self.context = AdapterContext(config)
        self.num_slots = num_slots
        self.r_max = r_max
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self._backend = resolve_backend(config.backend, self.device, interpret=config.interpret)
        self._check_weights(adapter_weights, self._backend)
        self._quantized = adapter_weights == "int8"
        self.layers: dict[str, SlotLoraLinear] = {}
        # the model's modules by name as loaded (wrapping keeps each base nn.Linear), for
        # compatibility checks without walking the model at every load
        self.named_modules: dict[str, nn.Module] = dict(model.named_modules())
        self.layout: SlotLayout | None = None
        self.stack: torch.Tensor | None = None  # [num_slots, layout.numel]
        self.scales: torch.Tensor | None = None  # [num_slots, layout.n_scales] when int8
        # per module, its A ([slots, r, in]) and B ([slots, out, r]) views of the stack
        self._views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.groups: list[LoraGroup] = []
        self.slot_ranks: list[dict[str, int]] = [{} for _ in range(num_slots)]
        self.active: list[set[int]] = [set() for _ in range(num_slots)]  # groups with a rank
        self.slot_writes = [0] * num_slots  # bumped at every write into a slot (cache keys)
        self._copy_stream: Any = None

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        backend = resolve_backend(value, self.device, interpret=self.config.interpret)
        self._check_weights(self.adapter_weights, backend)
        self._backend = backend
        self.context.epoch += 1
        if self.layout is not None and self._backend == "triton":
            self._relayout(set(self.layout.spots), self.layout.r)

    @property
    def adapter_weights(self) -> str:
        """``"int8"`` (quantized slots) or ``"model"`` (the model's dtype)."""
        return "int8" if self._quantized else "model"

    @adapter_weights.setter
    def adapter_weights(self, value: str) -> None:
        """Re-lay the stack out in ``value``'s form, converting the loaded adapters (callers
        hold the engine's model lock, as for :meth:`ensure`)."""
        self._check_weights(value, self._backend)
        quantized = value == "int8"
        if quantized == self._quantized:
            return
        self._quantized = quantized
        if self.layout is not None:
            self._relayout(set(self.layout.spots), self.layout.r, force=True)

    def _check_weights(self, value: str, backend: str) -> None:
        if value not in ("model", "int8"):
            raise ValueError(f"adapter_weights must be 'model' or 'int8', got {value!r}")
        if value == "int8" and backend != "triton":
            raise ValueError(
                "int8 adapter weights are read by the Triton LoRA kernels only (CUDA, or "
                f"TRITON_INTERPRET=1), not by the {backend!r} backend"
            )

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

    def _relayout(self, names: set[str], r: int, *, force: bool = False) -> None:
        r = self._rank_for(r)
        old_layout, old_stack, old_scales = self.layout, self.stack, self.scales
        if (
            not force
            and old_layout is not None
            and old_layout.r == r
            and set(old_layout.spots) == names
        ):
            return
        named = dict(self.model.named_modules())
        ordered = [n for n in named if n in names or n in self.layers]
        modules = []
        for name in ordered:
            base = self.layers[name].base if name in self.layers else named[name]
            modules.append((name, base.in_features, base.out_features))
        layout = SlotLayout(modules, r, quantized=self._quantized)
        self._sync_copies()
        stack = torch.zeros(
            self.num_slots, layout.numel, dtype=self.weight_dtype, device=self.device
        )
        scales = None
        if layout.quantized:
            scales = torch.zeros(
                self.num_slots, layout.n_scales, dtype=torch.float32, device=self.device
            )
        if old_layout is not None and old_stack is not None:
            layout.copy_from(old_layout, old_stack, stack, old_scales, scales)
        for name, _, _ in modules:
            self._wrap(name)
        self.layout, self.stack, self.scales = layout, stack, scales
        self.context.epoch += 1
        self._views = {
            name: (layout.a_view(stack, name), layout.b_view(stack, name)) for name in layout.spots
        }
        self.groups = [
            LoraGroup(self, g, [self.layers[n] for n in members])
            for g, members in enumerate(layout.groups)
        ]
        for group in self.groups:
            group.w_cat_t = self._fuse_weights(group)
        self._refresh_active()
        logger.info(
            "LoRA slot layout: %d modules in %d groups, rank %d, %d slots, %s, %.1f MiB",
            len(modules),
            len(self.groups),
            r,
            self.num_slots,
            "int8" if layout.quantized else str(self.dtype).removeprefix("torch."),
            self.slot_bytes() / 2**20,
        )

    @property
    def weight_dtype(self) -> torch.dtype:
        """The slot stack's dtype: int8 when quantized, else the model's."""
        return torch.int8 if self._quantized else self.dtype

    def _fuse_weights(self, group: LoraGroup) -> torch.Tensor | None:
        """Make the group's base weights rows of one tensor (:func:`.fuse.fuse_rows`);
        returns its transpose.

        ``q``/``k``/``v`` (or ``gate``/``up``) then cost one GEMM instead of three (two) when
        the Triton path or the CPU path computes the group together. Single modules, and the
        torch path on CUDA, are left alone.
        """
        if len(group.members) < 2 or not (self._backend == "triton" or group.cpu):
            return None
        bases = [m.base for m in group.members]
        if group.cpu and any(b.bias is not None for b in bases):
            return None  # the CPU group GEMM adds no biases
        cat = fuse_rows(bases)
        return None if cat is None else cat.t()

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
        flat, scales = self._host_buffers(layout, pin)
        ranks = layout.pack(weights, flat, scales)
        return PackedAdapter(flat=flat, layout=layout, ranks=ranks, scales=scales)

    def _host_buffers(self, layout: SlotLayout, pin: bool) -> tuple[torch.Tensor, Any]:
        flat = torch.empty(layout.numel, dtype=self.weight_dtype, pin_memory=pin)
        scales = None
        if layout.quantized:
            scales = torch.empty(layout.n_scales, dtype=torch.float32, pin_memory=pin)
        return flat, scales

    def repack(self, packed: PackedAdapter) -> PackedAdapter:
        """``packed`` in the current layout (itself when it already is)."""
        layout = self.layout
        if packed.layout is layout or layout is None:
            return packed
        flat, scales = self._host_buffers(layout, packed.flat.is_pinned())
        layout.copy_from(packed.layout, packed.flat, flat, packed.scales, scales)
        return PackedAdapter(flat=flat, layout=layout, ranks=dict(packed.ranks), scales=scales)

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
                if self.scales is not None and packed.scales is not None:
                    self.scales[slot].copy_(packed.scales, non_blocking=packed.flat.is_pinned())
                event = torch.cuda.Event()
                event.record(stream)
            self.context.add_pending(event)
        else:
            dst.copy_(packed.flat)
            if self.scales is not None and packed.scales is not None:
                self.scales[slot].copy_(packed.scales)
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
        if layout.quantized:  # values and scales together: through a packed buffer
            self.load(slot, self.pack(weights, pin=False))
            return
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
            if self.scales is not None:
                self.scales[slot].zero_()
        self.slot_ranks[slot] = {}
        self.active[slot] = set()
        self.slot_writes[slot] += 1

    def slot_bytes(self) -> int:
        """Memory held by the slot stack and its scales (preallocated, independent of how
        many are used)."""
        if self.stack is None:
            return 0
        return self.num_slots * self.adapter_bytes()

    def adapter_bytes(self) -> int:
        """Bytes of one packed adapter (one slot) in the current layout, scales included."""
        if self.layout is None or self.stack is None:
            return 0
        return self.layout.numel * self.stack.element_size() + 4 * self.layout.n_scales
