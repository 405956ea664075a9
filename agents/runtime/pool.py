"""The adapter pool: which adapter lives in which device slot, which in the CPU tier behind.

Two tiers, both least-recently-used and keyed by the adapter's immutable version digest (so
re-pointing an alias, say ``legal:prod`` from ``legal@3`` to ``legal@4``, resolves to another
digest and never serves the old weights):

- the device tier: ``max_resident`` slots (bounded by count and bytes); pinned adapters and
  adapters used by running requests are never evicted from it;
- the CPU tier: up to ``max_host`` packed host copies (``max_host_bytes``), from which an
  evicted adapter comes back with one host-to-device copy instead of a disk read. It keeps a
  copy of every device-resident adapter too, and drops only adapters that are not resident.
  ``max_host=0`` turns it off (evicted adapters are read again from their source).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import AgentError, PoolFullError

logger = logging.getLogger(__name__)


@dataclass
class ResidentAdapter:
    """One adapter in the pool."""

    digest: str
    ref: str
    slot: int
    nbytes: int
    rank: int
    target_modules: list[str] = field(default_factory=list)
    pinned: bool = False
    in_use: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "slot": self.slot,
            "bytes": self.nbytes,
            "rank": self.rank,
            "pinned": self.pinned,
            "in_use": self.in_use,
        }


@dataclass
class HostAdapter:
    """One adapter in the CPU tier: its packed host copy (``payload``) and what it is."""

    digest: str
    ref: str
    nbytes: int
    rank: int
    payload: Any = field(repr=False)
    target_modules: list[str] = field(default_factory=list)
    last_used: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"ref": self.ref, "digest": self.digest, "bytes": self.nbytes, "rank": self.rank}


class AdapterPool:
    """Slot bookkeeping for ``max_resident`` adapters (slots 1..max_resident; 0 = no adapter)
    and the CPU tier behind them.

    Not thread-safe by itself: the engine calls it under its lock.

    Example::

        >>> pool = AdapterPool(max_resident=2)
        >>> slot, evicted = pool.reserve("sha256:aa", "a@1", nbytes=10, rank=8)
        >>> slot, evicted
        (1, [])
    """

    def __init__(
        self,
        max_resident: int = 16,
        max_bytes: int | None = None,
        *,
        max_host: int = 0,
        max_host_bytes: int | None = None,
    ):
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, got {max_resident}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
        if max_host < 0:
            raise ValueError(f"max_host must be 0 (no CPU tier) or more, got {max_host}")
        if max_host_bytes is not None and max_host_bytes <= 0:
            raise ValueError(f"max_host_bytes must be positive or None, got {max_host_bytes}")
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self.max_host = max_host
        self.max_host_bytes = max_host_bytes
        self._entries: OrderedDict[str, ResidentAdapter] = OrderedDict()  # LRU first
        self._free = list(range(max_resident, 0, -1))  # pop() hands out 1, 2, ...
        self._host: OrderedDict[str, HostAdapter] = OrderedDict()  # LRU first
        self.evictions = 0
        self.host_drops = 0

    @property
    def num_slots(self) -> int:
        return self.max_resident + 1

    @property
    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: str) -> bool:
        return digest in self._entries

    def entries(self) -> list[ResidentAdapter]:
        """Resident adapters, least recently used first."""
        return list(self._entries.values())

    def get(self, digest: str, *, touch: bool = True) -> ResidentAdapter | None:
        entry = self._entries.get(digest)
        if entry is not None and touch:
            entry.last_used = time.time()
            self._entries.move_to_end(digest)
        return entry

    def _evictable(self) -> list[ResidentAdapter]:
        return [e for e in self._entries.values() if not e.pinned and e.in_use == 0]

    def reserve(
        self,
        digest: str,
        ref: str,
        *,
        nbytes: int,
        rank: int,
        target_modules: list[str] | None = None,
    ) -> tuple[int, list[ResidentAdapter]]:
        """Give ``digest`` a slot, evicting LRU adapters as needed; returns (slot, evicted)."""
        if digest in self._entries:
            raise AgentError(f"adapter {ref!r} ({digest}) is already resident")
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise PoolFullError(
                f"adapter {ref!r} needs {nbytes} bytes, more than the pool's max_bytes "
                f"({self.max_bytes}); raise max_bytes"
            )
        evicted: list[ResidentAdapter] = []

        def over() -> bool:
            if not self._free:
                return True
            return self.max_bytes is not None and self.used_bytes + nbytes > self.max_bytes

        while over():
            victims = self._evictable()
            if not victims:
                busy = ", ".join(
                    f"{e.ref} ({'pinned' if e.pinned else 'in use'})"
                    for e in self._entries.values()
                )
                raise PoolFullError(
                    f"cannot load adapter {ref!r}: every resident adapter is pinned or in use "
                    f"({busy}); unpin one, wait for requests to finish, or raise max_resident/max_bytes"
                )
            evicted.append(self._remove(victims[0]))
        slot = self._free.pop()
        self._entries[digest] = ResidentAdapter(
            digest=digest,
            ref=ref,
            slot=slot,
            nbytes=nbytes,
            rank=rank,
            target_modules=list(target_modules or []),
        )
        return slot, evicted

    def _remove(self, entry: ResidentAdapter) -> ResidentAdapter:
        del self._entries[entry.digest]
        self._free.append(entry.slot)
        self.evictions += 1
        logger.debug("evicted adapter %s (%s) from slot %d", entry.ref, entry.digest, entry.slot)
        return entry

    def evict(self, digest: str) -> ResidentAdapter:
        entry = self._entries.get(digest)
        if entry is None:
            raise KeyError(digest)
        if entry.in_use:
            raise PoolFullError(
                f"adapter {entry.ref!r} is used by {entry.in_use} running request(s)"
            )
        return self._remove(entry)

    def pin(self, digest: str, pinned: bool = True) -> None:
        self._entries[digest].pinned = pinned

    def acquire(self, digest: str) -> ResidentAdapter:
        entry = self.get(digest)
        if entry is None:
            raise KeyError(digest)
        entry.in_use += 1
        return entry

    def release(self, digest: str) -> None:
        entry = self._entries.get(digest)
        if entry is not None and entry.in_use > 0:
            entry.in_use -= 1

    # -- CPU tier --------------------------------------------------------------------------
    @property
    def host_bytes(self) -> int:
        return sum(e.nbytes for e in self._host.values())

    def host_entries(self) -> list[HostAdapter]:
        """Adapters in the CPU tier, least recently used first."""
        return list(self._host.values())

    def host_get(self, digest: str, *, touch: bool = True) -> HostAdapter | None:
        entry = self._host.get(digest)
        if entry is not None and touch:
            entry.last_used = time.time()
            self._host.move_to_end(digest)
        return entry

    def host_put(
        self,
        digest: str,
        ref: str,
        payload: Any,
        *,
        nbytes: int,
        rank: int,
        target_modules: list[str] | None = None,
    ) -> list[HostAdapter]:
        """Keep ``payload`` in the CPU tier; returns the entries dropped to make room.

        Only adapters that are not device-resident are dropped; when every other entry is
        resident the tier grows past its bound until some are evicted from the device.
        """
        if self.max_host == 0:
            return []
        old = self._host.pop(digest, None)
        self._host[digest] = HostAdapter(
            digest=digest,
            ref=ref,
            nbytes=nbytes,
            rank=rank,
            payload=payload,
            target_modules=list(target_modules or (old.target_modules if old else [])),
        )
        dropped: list[HostAdapter] = []

        def over() -> bool:
            if len(self._host) > self.max_host:
                return True
            return self.max_host_bytes is not None and self.host_bytes > self.max_host_bytes

        while over():
            victim = next(
                (
                    e
                    for e in self._host.values()
                    if e.digest not in self._entries and e.digest != digest
                ),
                None,
            )
            if victim is None:
                break
            del self._host[victim.digest]
            self.host_drops += 1
            dropped.append(victim)
            logger.debug("dropped adapter %s (%s) from the CPU tier", victim.ref, victim.digest)
        return dropped

    def host_update(self, digest: str, payload: Any) -> None:
        """Replace the payload of a CPU-tier entry (after a re-layout repacked it)."""
        entry = self._host.get(digest)
        if entry is not None:
            entry.payload = payload

    def host_drop(self, digest: str) -> HostAdapter | None:
        return self._host.pop(digest, None)
