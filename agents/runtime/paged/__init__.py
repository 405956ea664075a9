"""The paged serving path: a paged KV cache, chunked prefill mixed into decode steps, fused
kernels around the GEMMs and graphed decode steps.

- :mod:`.kv_cache`: blocks, block tables, the allocator and its prefix cache;
- :mod:`.batch`: :class:`PagedBatch`, the scheduling of one step (admission, chunks,
  preemption) and its forward;
- :mod:`.runner`: :class:`PagedModel`, a Llama-family forward over a ragged batch, and
  :class:`DecodeGraphs`, decode-only steps recorded as CUDA graphs;
- :mod:`.ops` / :mod:`.kernels`: the step's operations, in Triton on CUDA and in PyTorch
  elsewhere.
"""

from __future__ import annotations

from .batch import PagedBatch, StepOutput, cache_blocks
from .kv_cache import BlockAllocator, CacheShape, KVCache, block_hashes
from .runner import DecodeGraphs, PagedModel, supports_paged

__all__ = [
    "BlockAllocator",
    "CacheShape",
    "DecodeGraphs",
    "KVCache",
    "PagedBatch",
    "PagedModel",
    "StepOutput",
    "block_hashes",
    "cache_blocks",
    "supports_paged",
]
