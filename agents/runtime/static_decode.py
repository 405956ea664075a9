"""Decode steps over static buffers, replayed as CUDA graphs on a GPU.

An eager decode step of an 8B model spends far longer launching its few hundred kernels from
Python than the GPU spends running them. A CUDA graph records the step once and replays it
with one launch, but it bakes in every tensor address and shape. So the static path keeps:

- the KV cache in preallocated ``[max_rows, kv_heads, capacity, head_dim]`` buffers per
  layer (:class:`StaticKV`); rows are left-padded as in the dynamic path, so every row writes
  the same column at a step, held in a one-element device tensor (``write_at``);
- the step's inputs (token ids, per-row positions, ``write_at``) in one device buffer and the
  attention mask as an additive ``[max_rows, 1, 1, capacity]`` buffer, updated in place;
- batches padded to a power-of-two row count (padding rows: token 0, no adapter, a mask that
  sees only the column they write, so their numbers stay finite and touch no real row);
- the rows' adapter slots in :class:`~loraroute.agents.lora.StaticPlanBuffers`.

A graph is recorded per (row bucket, capacity, tile bucket) and kept in a small LRU; a new
composition of adapters with the same tile bucket replays the same graph after its slots are
written into the buffers. Everything but the recording runs on any device (the CPU tests run
it eagerly); :attr:`StaticDecoder.graphs` turns recording on (CUDA only).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..lora import AdapterContext, StaticPlanBuffers
from .graphs import GraphedSteps, StepGraphs

logger = logging.getLogger(__name__)

MIN_CAPACITY = 64
MAX_GRAPHS = 32


def _bucket(n: int, cap: int) -> int:
    """``n`` rounded up to a power of two, at most ``cap``."""
    return min(1 << max(n - 1, 0).bit_length(), cap)


def static_cache_class() -> type:
    from transformers import DynamicCache

    class StaticKV(DynamicCache):  # type: ignore[misc, valid-type]
        """A cache over fixed buffers: each layer's update writes the column ``write_at`` of
        every row in place and hands back the whole buffers (the mask hides the rest).

        A ``DynamicCache`` only so that model code that checks the type is satisfied; its
        own layers stay empty. ``update`` accepts both call styles of transformers 5.x.
        """

        def __init__(self, config: Any, keys: list[torch.Tensor], values: list[torch.Tensor],
                     write_at: torch.Tensor, seen: int):  # fmt: skip
            super().__init__(config=config)
            self._kbufs, self._vbufs, self._write_at, self._seen = keys, values, write_at, seen

        def update(  # type: ignore[override]
            self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
            *args: Any, **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
            k, v = self._kbufs[layer_idx], self._vbufs[layer_idx]
            k.index_copy_(2, self._write_at, key_states)
            v.index_copy_(2, self._write_at, value_states)
            return k, v

        def get_seq_length(self, layer_idx: int | None = 0, *args: Any, **kwargs: Any) -> int:
            return self._seen

    return StaticKV


ATTENTION = "loraroute_static_decode"


def decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over the static buffers, for grouped KV heads.

    transformers' SDPA path copies each KV head once per query head it serves (``repeat_kv``)
    when a mask is given, which on the whole static cache costs more than the attention
    itself. Here the ``G`` query heads of one KV head become ``G`` query rows of that head
    (query heads are grouped consecutively), so K and V are read once, in place.
    """
    b, heads, q_len, dim = query.shape
    kv = key.shape[1]
    if q_len != 1 or heads % kv:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q = query.reshape(b, kv, heads // kv, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=attention_mask, scale=scaling
    )  # [b, kv, G, dim]
    return out.reshape(b, 1, heads, dim), None


def _register_attention() -> bool:
    try:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, decode_attention)
        return True
    except Exception:  # noqa: BLE001 - older transformers: its own attention serves
        logger.info("transformers has no AttentionInterface; static decode uses its SDPA path")
        return False


def supports_static(model: Any) -> str | None:
    """Why ``model`` cannot decode over a static cache (``None`` when it can): every layer
    must attend over the whole cache with the mask it is given."""
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return f"layer types {sorted(set(types))}"
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if getattr(cfg, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    return None


class StaticDecoder(GraphedSteps):
    """The static buffers of one scheduler and its recorded graphs (see the module docstring).

    The scheduler keeps the logical state (rows, ``[rows, width]`` 0/1 mask); this class
    mirrors it into the buffers: :meth:`insert` a prefilled row, :meth:`widen` (shift rows
    right when a longer prompt joins), :meth:`keep` (rows leave), :meth:`trim` (drop leading
    columns no row uses), and :meth:`step` runs one decode step for the first ``rows`` rows.
    """

    def __init__(
        self,
        model: Any,
        context: AdapterContext,
        *,
        max_rows: int,
        max_context: int,
        cache_kw: str,
        graphs: bool,
    ):
        self.model = model
        self.context = context
        self.max_rows = max_rows
        self.max_context = max_context
        self.cache_kw = cache_kw
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._graphs = graphs and self.device.type == "cuda"
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # [max_rows, 1, 1, capacity] additive
        self.mask_dirty = True
        # token ids, positions, write column: one buffer, one host-to-device copy a step
        self.inputs = torch.zeros(2 * max_rows + 1, dtype=torch.long, device=self.device)
        self.ids = self.inputs[:max_rows].view(max_rows, 1)
        self.pos = self.inputs[max_rows : 2 * max_rows].view(max_rows, 1)
        self.write_at = self.inputs[2 * max_rows :]
        self.plan_buffers = StaticPlanBuffers(max_rows, self.device)
        self._cache_cls = static_cache_class()
        # our decode attention while the model runs a static step (when this transformers
        # takes registered attention functions and the model uses SDPA or eager attention)
        impl = getattr(model.config, "_attn_implementation", None)
        self._attention = impl in ("sdpa", "eager") and _register_attention()
        self._steps = StepGraphs(self.device, self._forward, limit=MAX_GRAPHS, what="decode step")
        self._epoch: tuple = ()
        self.trims = 0  # times leading columns were dropped to make room

    # -- buffers ---------------------------------------------------------------------------
    def _allocate(self, like: list[tuple[torch.Tensor, torch.Tensor]], capacity: int,
                  keep_rows: int, keep_cols: int) -> None:  # fmt: skip
        """(Re)allocate the buffers for ``capacity`` columns, keeping the first ``keep_rows``
        rows' first ``keep_cols`` columns. ``like``: per layer, a keys and a values tensor
        of the shapes and dtype to hold (``[*, heads, *, head_dim]``)."""
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, pair in enumerate(like):
            for src, out, old in zip(pair, (keys, values), (self.keys, self.values), strict=True):
                _, heads, _, dim = src.shape
                buf = torch.zeros(
                    self.max_rows, heads, capacity, dim, dtype=src.dtype, device=src.device
                )
                if old and keep_rows and keep_cols:
                    buf[:keep_rows, :, :keep_cols] = old[i][:keep_rows, :, :keep_cols]
                out.append(buf)
        self.keys, self.values, self.capacity = keys, values, capacity
        self.mask = torch.zeros(self.max_rows, 1, 1, capacity, dtype=self.dtype, device=self.device)
        self.mask_dirty = True
        self._drop_graphs()
        logger.debug("static KV buffers: %d rows x %d columns", self.max_rows, capacity)

    def reserve(self, width: int, rows: int, needed: int, cache: Any = None) -> None:
        """Make room for ``needed`` columns (the ``rows`` x ``width`` in use are kept);
        ``cache``: a prefill cache to take shapes from before the first allocation."""
        if needed <= self.capacity and self.keys:
            return
        like = (
            [(layer.keys, layer.values) for layer in cache.layers]
            if cache is not None and not self.keys
            else list(zip(self.keys, self.values, strict=True))
        )
        capacity = max(MIN_CAPACITY, 1 << (needed - 1).bit_length())
        capacity = max(min(capacity, self.max_context), needed)
        self._allocate(like, capacity, rows, width)

    def insert(self, row: int, cache: Any, width: int) -> None:
        """Row ``row`` takes a prefilled ``cache`` (one row) left-padded to ``width`` columns."""
        for i, layer in enumerate(cache.layers):
            for src, buf in ((layer.keys, self.keys[i]), (layer.values, self.values[i])):
                n = src.shape[2]
                buf[row, :, width - n : width] = src[0]
                buf[row, :, : width - n].zero_()
        self.mask_dirty = True

    def widen(self, rows: int, width: int, shift: int) -> None:
        """Move the first ``rows`` rows' ``width`` columns ``shift`` columns right."""
        for buf in (*self.keys, *self.values):
            buf[:rows, :, shift : shift + width] = buf[:rows, :, :width].clone()
            buf[:rows, :, :shift].zero_()
        self.mask_dirty = True

    def keep(self, index: list[int], width: int) -> None:
        """Rows ``index`` (in order) become rows ``0..len(index)-1``."""
        if index == list(range(len(index))):
            return
        idx = torch.tensor(index, device=self.device)
        for buf in (*self.keys, *self.values):
            buf[: len(index), :, :width] = buf.index_select(0, idx)[:, :, :width]
        self.mask_dirty = True

    def trim(self, rows: int, start: int, width: int) -> None:
        """Drop the first ``start`` of ``width`` columns of the first ``rows`` rows."""
        for buf in (*self.keys, *self.values):
            buf[:rows, :, : width - start] = buf[:rows, :, start:width].clone()
        self.mask_dirty = True
        self.trims += 1

    # -- a decode step ---------------------------------------------------------------------
    def step(
        self, tokens: list[int], positions: list[int], slots: list[int], logical_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of one decode step; ``logical_mask`` is ``[rows, width]``
        (the scheduler's 0/1 mask before this step's column), the step writes column
        ``width``."""
        rows, width = logical_mask.shape
        if width >= self.capacity:
            raise RuntimeError("the static KV buffers are full; reserve() first")
        b = _bucket(rows, self.max_rows)
        pad = b - rows
        values = torch.tensor(
            tokens + [0] * pad + [0] * (self.max_rows - b)
            + positions + [0] * (self.max_rows - rows) + [width],
            dtype=torch.long,
        )  # fmt: skip
        self.inputs.copy_(values, non_blocking=False)
        assert self.mask is not None
        if self.mask_dirty:
            lowest = torch.finfo(self.mask.dtype).min
            self.mask.fill_(lowest)
            self.mask[:rows, 0, 0, :width].masked_fill_(logical_mask.to(torch.bool), 0.0)
            self.mask_dirty = False
        row_slots = slots + [0] * pad
        lora = any(row_slots)
        tiles = self.plan_buffers.write(row_slots) if lora else 0
        epoch = (self.context.epoch, self.capacity)
        if epoch != self._epoch:
            self._drop_graphs()
            self._epoch = epoch
        if not self.graphs:
            return self._forward(b, lora)[:rows]
        key = (b, tiles if lora else -1)
        return self._steps.run(key, b, lora, self.context.wait_copies)[:rows]

    def _forward(self, b: int, lora: bool) -> torch.Tensor:
        assert self.mask is not None
        mask = self.mask[:b]
        # this step's column is visible to every row (padding rows see nothing else)
        mask.index_fill_(3, self.write_at, 0.0)
        cache = self._cache_cls(
            self.model.config,
            [k[:b] for k in self.keys],
            [v[:b] for v in self.values],
            self.write_at,
            self.capacity,
        )
        config = self.model.config
        impl = config._attn_implementation
        if self._attention:
            config._attn_implementation = ATTENTION
        try:
            with self.context.use_static(self.plan_buffers if lora else None):
                out = self.model(
                    input_ids=self.ids[:b],
                    attention_mask=mask,
                    position_ids=self.pos[:b],
                    use_cache=True,
                    **{self.cache_kw: cache},
                )
        finally:
            config._attn_implementation = impl
        return out.logits[:, -1, :]

    def _drop_graphs(self) -> None:
        self._steps.drop()
