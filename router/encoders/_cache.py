"""Embedding cache: an in-memory dict, optionally backed by append-only ``.npy`` shards.

Each write adds a pair ``<n>.keys.npy`` (16-byte text digests) + ``<n>.vecs.npy``; opening the
cache reads every shard. Shards are written under a temporary name and renamed, so a crash
leaves no half-written shard; many small shards are merged into one when there are too many.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_MAX_SHARDS = 32
#: Vectors of requests (not routing examples) are kept in a bounded LRU, so a long-running
#: server does not grow without bound while conversation turns are still embedded once.
REQUEST_CACHE_SIZE = 4096


class EmbeddingCache:
    def __init__(self, folder: Path | None, *, dim: int) -> None:
        self.folder = folder
        self.dim = dim
        self._mem: dict[bytes, np.ndarray] = {}
        self._recent: OrderedDict[bytes, np.ndarray] = OrderedDict()
        if folder is not None and folder.is_dir():
            self._load()

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, key: bytes) -> np.ndarray | None:
        vec = self._mem.get(key)
        if vec is None:
            vec = self._recent.get(key)
            if vec is not None:
                self._recent.move_to_end(key)
        return vec

    def clear(self) -> None:
        """Forget every vector held in memory (the on-disk shards stay)."""
        self._mem.clear()
        self._recent.clear()

    def put(self, keys: list[bytes], vecs: np.ndarray, *, persist: bool = True) -> None:
        if not persist:
            for k, v in zip(keys, vecs, strict=True):
                self._recent[k] = v
            while len(self._recent) > REQUEST_CACHE_SIZE:
                self._recent.popitem(last=False)
            return
        for k, v in zip(keys, vecs, strict=True):
            self._mem[k] = v
        if self.folder is not None and keys:
            self._write_shard(keys, vecs)

    def _shards(self) -> list[Path]:
        if self.folder is None:
            return []
        return sorted(self.folder.glob("*.keys.npy"))

    def _load(self) -> None:
        for kpath in self._shards():
            vpath = kpath.with_name(kpath.name.replace(".keys.npy", ".vecs.npy"))
            try:
                keys = np.load(kpath)
                vecs = np.load(vpath)
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable embedding cache shard %s: %s", kpath, exc)
                continue
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
                logger.warning("skipping embedding cache shard %s of shape %s", kpath, vecs.shape)
                continue
            for k, v in zip(keys, vecs, strict=True):
                self._mem[_key_bytes(k)] = v

    def _write_shard(self, keys: list[bytes], vecs: np.ndarray) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = uuid.uuid4().hex
        karr = _key_array(keys)
        _atomic_save(self.folder / f"{stem}.vecs.npy", np.asarray(vecs, dtype=np.float32))
        _atomic_save(self.folder / f"{stem}.keys.npy", karr)  # keys last: marks the shard whole
        if len(self._shards()) > _MAX_SHARDS:
            self._compact()

    def _compact(self) -> None:
        if self.folder is None:
            return
        old = self._shards()
        keys = list(self._mem)
        vecs = np.stack([self._mem[k] for k in keys]) if keys else np.zeros((0, self.dim))
        stem = uuid.uuid4().hex
        _atomic_save(self.folder / f"{stem}.vecs.npy", vecs.astype(np.float32))
        _atomic_save(self.folder / f"{stem}.keys.npy", _key_array(keys))
        for kpath in old:
            kpath.unlink(missing_ok=True)
            kpath.with_name(kpath.name.replace(".keys.npy", ".vecs.npy")).unlink(missing_ok=True)


def _key_array(keys: list[bytes]) -> np.ndarray:
    # uint8 rows, not an "S16" array: numpy strips trailing NUL bytes from "S" items.
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)


def _key_bytes(k: np.ndarray) -> bytes:
    if k.dtype.kind == "S":  # shards written before keys were uint8 rows
        return bytes(k).ljust(16, b"\0")
    return k.tobytes()


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)
