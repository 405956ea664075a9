"""The paged KV cache: fixed-size blocks of token slots, a block table per sequence.

Every layer's keys and values live in one preallocated tensor each, ``[layers, blocks *
block_size, kv_heads, head_dim]``; a sequence owns a list of blocks (its block table) and its
token ``p`` sits in slot ``table[p // block_size] * block_size + p % block_size``. Nothing is
ever copied to make room: a sequence grows by taking a free block, and a finished or cancelled
one gives its blocks back.

Block 0 is never handed out: the padding rows of a replayed CUDA graph write their keys there.

Prefix reuse: a block filled with prompt tokens is registered under a hash of those tokens, the
hash of the block before it and the adapter that computed it (a LoRA on ``k``/``v`` changes the
cached values). A later request whose prompt starts with the same blocks takes them instead of
computing them again (the shared system prompt of a chatbot). Released blocks keep their hash
and are reused, least recently used first, only when no free block is left.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    """The shape of one model's paged cache."""

    layers: int
    kv_heads: int
    head_dim: int
    blocks: int
    block_size: int

    @property
    def slots(self) -> int:
        return self.blocks * self.block_size

    def bytes(self, dtype: torch.dtype) -> int:
        """Bytes of keys and values together."""
        size = torch.empty(0, dtype=dtype).element_size()
        return 2 * self.layers * self.slots * self.kv_heads * self.head_dim * size

    @staticmethod
    def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class KVCache:
    """The key and value tensors of every layer (see the module docstring)."""

    def __init__(self, shape: CacheShape, dtype: torch.dtype, device: torch.device):
        self.shape = shape
        self.block_size = shape.block_size
        dims = (shape.layers, shape.slots, shape.kv_heads, shape.head_dim)
        self.k = torch.zeros(dims, dtype=dtype, device=device)
        self.v = torch.zeros(dims, dtype=dtype, device=device)

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def block_hashes(tokens: list[int], block_size: int, adapter: str | None) -> list[int]:
    """One hash per full block of ``tokens``, each over the block's tokens, the previous
    block's hash and the adapter (``None``: the base model)."""
    out: list[int] = []
    parent = hash(("loraroute-kv", adapter))
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        out.append(parent)
    return out


class BlockAllocator:
    """Which blocks are free, which belong to sequences (reference counted: a prefix block can
    serve several), and which cached prefixes are kept while nobody uses them.

    Example::

        >>> alloc = BlockAllocator(blocks=5)
        >>> table = alloc.allocate(3); alloc.free_blocks
        1
        >>> alloc.release(table); alloc.free_blocks
        4
    """

    def __init__(self, blocks: int, *, prefix_caching: bool = True):
        if blocks < 2:
            raise ValueError(f"a paged KV cache needs at least 2 blocks, got {blocks}")
        self.blocks = blocks
        self.prefix_caching = prefix_caching
        self._free: deque[int] = deque(range(1, blocks))  # block 0: graph padding writes
        self._refs = [0] * blocks
        self._hash_of: dict[int, int] = {}  # block -> its prefix hash
        self._by_hash: dict[int, int] = {}  # prefix hash -> block
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses (LRU)
        self.hits = 0  # prefix blocks reused (for stats and tests)
        self.peak_used = 0

    @property
    def free_blocks(self) -> int:
        """Blocks a sequence may take now (free ones and idle cached ones)."""
        return len(self._free) + len(self._idle)

    @property
    def used_blocks(self) -> int:
        return self.blocks - 1 - self.free_blocks

    def allocate(self, n: int) -> list[int] | None:
        """``n`` blocks for one sequence, or ``None`` (nothing taken) when fewer are free."""
        if n > self.free_blocks:
            return None
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:  # the least recently used cached prefix block gives way
                block, _ = self._idle.popitem(last=False)
                del self._by_hash[self._hash_of.pop(block)]
            self._refs[block] = 1
            out.append(block)
        self.peak_used = max(self.peak_used, self.used_blocks)
        return out

    def release(self, blocks: list[int]) -> None:
        """Give back one sequence's blocks (its table); cached ones stay findable."""
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if block in self._hash_of:
                self._idle[block] = None
            else:
                self._free.append(block)

    def match(self, hashes: list[int]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes``, each now referenced once
        more by the caller (release them with the rest of its table)."""
        if not self.prefix_caching:
            return []
        out = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._idle[block]
            self._refs[block] += 1
            out.append(block)
        self.hits += len(out)
        self.peak_used = max(self.peak_used, self.used_blocks)
        return out

    def cached(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are cached (nothing is taken)."""
        if not self.prefix_caching:
            return 0
        n = 0
        for h in hashes:
            if h not in self._by_hash:
                break
            n += 1
        return n

    def idle_among(self, hashes: list[int]) -> int:
        """How many of the leading cached blocks of ``hashes`` nobody uses now (taking them
        lowers :attr:`free_blocks`)."""
        n = 0
        for h in hashes[: self.cached(hashes)]:
            n += self._refs[self._by_hash[h]] == 0
        return n

    def register(self, block: int, h: int) -> None:
        """``block`` now holds the computed prefix ``h`` (first come, first kept)."""
        if not self.prefix_caching or h in self._by_hash or block in self._hash_of:
            return
        self._by_hash[h] = block
        self._hash_of[block] = h

    def reset_prefixes(self) -> None:
        """Forget every cached prefix (the adapters' slots changed meaning, say)."""
        for block in list(self._idle):
            self._free.append(block)
        self._idle.clear()
        self._by_hash.clear()
        self._hash_of.clear()


__all__ = ["BlockAllocator", "CacheShape", "KVCache", "block_hashes"]
