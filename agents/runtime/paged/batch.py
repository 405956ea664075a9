"""Continuous batching over the paged KV cache: admission, chunked prefill mixed into decode
steps, preemption, prefix reuse.

Every step is one forward over a ragged batch:

1. each running sequence that decodes feeds its last token (a new block when it crosses a block
   boundary; when no block is free, the most recently admitted sequence is preempted: its
   blocks go back and it waits again at the head of the queue, to be recomputed later);
2. sequences still in their prompt feed their next chunk, oldest first, within the step's
   token budget;
3. waiting requests are admitted, oldest first, while rows and budget remain and the free
   blocks hold the whole prompt (plus a small watermark); a request that does not fit waits.
   Full prompt blocks already cached for the same adapter are taken instead of computed.

Only sequences whose step reaches their last known token produce logits. Steps in which every
sequence decodes are replayed as CUDA graphs (:class:`~.runner.DecodeGraphs`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from ...lora import AdapterContext
from ..rows import Row
from .kv_cache import BlockAllocator, CacheShape, KVCache, block_hashes
from .ops import build_meta
from .runner import DecodeGraphs, PagedModel

logger = logging.getLogger(__name__)

WATERMARK = 0.01  # of the blocks kept free at admission, so new rows do not preempt at once


@dataclass
class StepOutput:
    """What one step produced: ``logits[i]`` belongs to ``rows[i]``."""

    rows: list[Row]
    logits: torch.Tensor | None
    decode_only: bool
    tokens: int  # tokens fed
    decode_rows: int  # rows that fed one token and sample


def cache_blocks(
    model: Any,
    *,
    block_size: int,
    max_rows: int,
    max_context: int,
    tokens: int | None,
    memory_fraction: float,
) -> int:
    """Blocks of the cache: ``tokens`` when given, else enough for every row at the full
    context, at most ``memory_fraction`` of the free device memory (CUDA); never fewer than
    one full-length sequence needs."""
    per_seq = math.ceil(max_context / block_size)
    if tokens is not None:
        blocks = math.ceil(tokens / block_size)
    else:
        blocks = max_rows * per_seq
        device = next(model.parameters()).device
        if device.type == "cuda":
            cfg = model.config
            heads = cfg.num_attention_heads
            kv = getattr(cfg, "num_key_value_heads", None) or heads
            dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            dtype = next(model.parameters()).dtype
            per_block = block_size * CacheShape.bytes_per_token(
                cfg.num_hidden_layers, kv, dim, dtype
            )
            free, _ = torch.cuda.mem_get_info(device)
            blocks = min(blocks, int(free * memory_fraction) // per_block)
    return max(blocks, per_seq) + 1  # block 0 is never handed out


class PagedBatch:
    """The paged path of a :class:`~..scheduler.BatchScheduler` (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        context: AdapterContext,
        *,
        max_rows: int,
        max_context: int,
        block_size: int = 16,
        blocks: int,
        max_step_tokens: int,
        prefix_caching: bool = True,
        graphs: bool = True,
        triton: bool | None = None,
    ):
        cfg = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.shape = CacheShape(cfg.num_hidden_layers, kv, dim, blocks, block_size)
        self.block_size = block_size
        self.max_rows = max_rows
        self.max_context = max_context
        self.max_step_tokens = max(max_step_tokens, 1)
        self.cache = KVCache(self.shape, self.dtype, self.device)
        self.alloc = BlockAllocator(blocks, prefix_caching=prefix_caching)
        self.max_blocks = math.ceil(max_context / block_size)
        # every sequence's block table: row 0 stays zeros (graph padding rows read it)
        self.tables = torch.zeros(max_rows + 1, self.max_blocks, dtype=torch.int32,
                                  device=self.device)  # fmt: skip
        self._host_tables = torch.zeros(max_rows + 1, self.max_blocks, dtype=torch.int32)
        self._dirty: set[int] = set()
        self._free_rows = list(range(max_rows, 0, -1))
        if triton is None:
            triton = self.device.type == "cuda"
        self.runner = PagedModel(
            model, context, self.cache, max_positions=max_context, triton=triton
        )
        self.context = context
        self.graphs: DecodeGraphs | None = None
        self.set_graphs(graphs, static=True)
        self.waiting: deque[Row] = deque()
        self.running: list[Row] = []
        self.preemptions = 0
        logger.info(
            "paged KV cache: %d blocks of %d tokens (%.1f GiB), %d rows, %d tokens a step",
            blocks - 1,
            block_size,
            self.cache.nbytes() / 2**30,
            max_rows,
            self.max_step_tokens,
        )

    def set_graphs(self, graphs: bool, *, static: bool) -> None:
        """Decode-only steps over static buffers (``static``), recorded as CUDA graphs
        (``graphs``, CUDA with the Triton kernels only), or plainly eager."""
        if not static:
            self.graphs = None
            return
        self.graphs = DecodeGraphs(
            self.runner,
            self.tables,
            max_rows=self.max_rows,
            graphs=graphs and self.runner.ops.triton,
        )

    # -- the queue -------------------------------------------------------------------------
    def add(self, row: Row) -> None:
        self.waiting.append(row)

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def drop(self, end: Any) -> None:
        """End (``end(row, state, error=...)``) and free the rows that are done or
        cancelled, running or waiting."""
        keep = []
        for row in self.running:
            state = row.done
            if state is None and row.handle.cancelled:
                state = "cancelled"
            if state is None:
                keep.append(row)
                continue
            self._free(row)
            end(row, state, error=row.error)
        self.running[:] = keep
        if any(r.handle.cancelled for r in self.waiting):
            for row in [r for r in self.waiting if r.handle.cancelled]:
                self.waiting.remove(row)
                end(row, "cancelled")

    def reset(self) -> list[Row]:
        """Forget every row (after a failed step); returns them."""
        rows = list(self.running) + list(self.waiting)
        for row in self.running:
            self._free(row)
        self.running.clear()
        self.waiting.clear()
        self.alloc.reset_prefixes()
        return rows

    def _free(self, row: Row) -> None:
        if row.blocks:
            self.alloc.release(row.blocks)
            row.blocks = []
        if row.table_row:
            self._free_rows.append(row.table_row)
            row.table_row = 0
        row.registered = 0

    # -- one step --------------------------------------------------------------------------
    def schedule(self) -> list[tuple[Row, int]]:
        """``(row, tokens it feeds)`` of the next step (see the module docstring)."""
        plan: list[tuple[Row, int]] = []
        preempted: set[int] = set()
        for row in list(self.running):
            if row.length - row.computed != 1 or id(row) in preempted:
                continue
            while not self._grow(row, row.computed + 1):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.add(id(victim))
                if victim is row:
                    break
            else:
                plan.append((row, 1))
        budget = self.max_step_tokens - len(plan)
        for row in self.running:
            pending = row.length - row.computed
            if pending > 1 and budget > 0:
                n = min(pending, budget)
                plan.append((row, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_rows:
            row = self.waiting[0]
            if not self._admit(row):
                break
            self.waiting.popleft()
            self.running.append(row)
            row.handle.mark_scheduled()  # queue time ends at the first admission
            n = min(row.length - row.computed, budget)
            plan.append((row, n))
            budget -= n
        return plan

    def _grow(self, row: Row, tokens: int) -> bool:
        """Blocks for ``tokens`` tokens of ``row`` (``False``: none free)."""
        need = math.ceil(tokens / self.block_size) - len(row.blocks)
        if need <= 0:
            return True
        got = self.alloc.allocate(need)
        if got is None:
            return False
        self._set_blocks(row, len(row.blocks), got)
        row.blocks.extend(got)
        return True

    def _set_blocks(self, row: Row, at: int, blocks: list[int]) -> None:
        self._host_tables[row.table_row, at : at + len(blocks)] = torch.tensor(
            blocks, dtype=torch.int32
        )
        self._dirty.add(row.table_row)

    def _admit(self, row: Row) -> bool:
        """Give ``row`` its table row and the blocks of its whole sequence so far (cached
        prefix blocks first); ``False`` when they are not free."""
        total = row.length
        need = math.ceil(total / self.block_size)
        if need > self.alloc.blocks - 1:
            raise RuntimeError(
                f"a sequence of {total} tokens needs {need} KV blocks and the cache has "
                f"{self.alloc.blocks - 1}; raise kv_cache_tokens or lower max_context"
            )
        tokens = row.token_at(0, total - 1)  # the last token is always computed
        hashes = block_hashes(tokens, self.block_size, row.handle.adapter_digest)
        cached = self.alloc.cached(hashes)
        taken = self.alloc.idle_among(hashes)
        watermark = int(WATERMARK * self.alloc.blocks) if self.running else 0
        if need - cached + taken + watermark > self.alloc.free_blocks:
            return False
        prefix = self.alloc.match(hashes[:cached])
        rest = self.alloc.allocate(need - len(prefix))
        if rest is None:  # pragma: no cover - counted above
            self.alloc.release(prefix)
            return False
        row.table_row = self._free_rows.pop()
        row.blocks = prefix + rest
        row.hashes = hashes
        row.registered = len(prefix)
        row.computed = len(prefix) * self.block_size
        self._set_blocks(row, 0, row.blocks)
        return True

    def _preempt(self, row: Row) -> None:
        """Take ``row``'s blocks back; it waits at the head of the queue to be recomputed
        (its prompt and generated tokens, through the prefix cache where it still holds)."""
        self._free(row)
        row.computed = 0
        row.preempted += 1
        self.preemptions += 1
        self.running.remove(row)
        self.waiting.appendleft(row)
        logger.info("preempted request %s: the KV cache is full", row.handle.id)

    def run(self, plan: list[tuple[Row, int]]) -> StepOutput:
        """The forward of ``plan``: every fed token's keys go to the cache; logits for the
        rows whose step reaches their last token."""
        if self._dirty:
            rows = sorted(self._dirty)
            index = torch.tensor(rows)
            self.tables.index_copy_(
                0, index.to(self.device), self._host_tables.index_select(0, index).to(self.device)
            )
            self._dirty.clear()
        sampling = [row for row, n in plan if row.computed + n == row.length]
        decode_only = all(n == 1 for _, n in plan)
        tokens = sum(n for _, n in plan)
        if decode_only and self.graphs is not None:
            logits = self.graphs.step(
                [row.token_at(row.computed, row.computed + 1)[0] for row, _ in plan],
                [row.computed for row, _ in plan],
                [row.table_row for row, _ in plan],
                [row.handle.slot for row, _ in plan],
            )
        else:
            logits = self._eager(plan, sampling)
        for row, n in plan:
            row.computed += n
            self._register(row)
        return StepOutput(
            rows=sampling,
            logits=logits,
            decode_only=decode_only,
            tokens=tokens,
            decode_rows=sum(1 for _, n in plan if n == 1),
        )

    def _eager(self, plan: list[tuple[Row, int]], sampling: list[Row]) -> torch.Tensor:
        ids: list[int] = []
        slots: list[int] = []
        sample: list[int] = []
        seqs = []
        for row, n in plan:
            ids.extend(row.token_at(row.computed, row.computed + n))
            slots.extend([row.handle.slot] * n)
            if row.computed + n == row.length:
                sample.append(len(ids) - 1)
            seqs.append((n, row.computed + n, row.table_row))
        runner = self.runner
        meta = build_meta(seqs, self.tables, self.block_size, runner.groups, self.device)
        host = torch.tensor(ids + sample, dtype=torch.long)
        if self.device.type == "cuda":
            host = host.pin_memory()
        host = host.to(self.device, non_blocking=True)
        with self.context.use(slots, self.device):
            return runner.forward(host[: len(ids)], meta, host[len(ids) :])

    def _register(self, row: Row) -> None:
        """Offer the row's newly computed full prompt blocks to the prefix cache."""
        full = min(len(row.hashes), row.computed // self.block_size)
        for j in range(row.registered, full):
            self.alloc.register(row.blocks[j], row.hashes[j])
        row.registered = max(row.registered, full)

    def stats(self) -> dict:
        return {
            "blocks": self.alloc.blocks - 1,
            "block_size": self.block_size,
            "used_blocks": self.alloc.used_blocks,
            "peak_used_blocks": self.alloc.peak_used,
            "prefix_hits": self.alloc.hits,
            "preemptions": self.preemptions,
            "cache_bytes": self.cache.nbytes(),
            "graph_captures": self.graphs.captures if self.graphs else 0,
            "graph_replays": self.graphs.replays if self.graphs else 0,
            "graph_failures": self.graphs.failures if self.graphs else 0,
        }


__all__ = ["PagedBatch", "StepOutput", "cache_blocks"]
