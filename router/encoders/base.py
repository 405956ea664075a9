"""The encoder interface: texts in, L2-normalised float32 vectors out, cached per text digest.

Subclasses implement :meth:`Encoder._embed` (a batch of already-truncated texts) and
:meth:`Encoder.truncate`; the base class adds normalisation and the cache, so an unchanged
routing example is embedded once per encoder, however often routes are rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EncoderError
from ._cache import EmbeddingCache

logger = logging.getLogger(__name__)


class Encoder(ABC):
    """Turns texts into unit vectors.

    Example::

        >>> from loraroute.router.encoders import HashingEncoder
        >>> enc = HashingEncoder(dim=64)
        >>> enc.encode(["hello world"]).shape
        (1, 64)
    """

    #: Short stable id of the encoder and its weights; part of every cache key and saved state.
    name: str = "encoder"
    dim: int = 0
    #: Longest input (in the encoder's own tokens) that is embedded without truncation.
    max_tokens: int = 256

    def __init__(self, *, cache_dir: Path | str | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._cache: EmbeddingCache | None = None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.calls = 0  # number of _embed calls, handy to check batching
        self.embedded = 0  # texts actually embedded (cache misses)

    @property
    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            folder = self._cache_dir / _safe(self.name) if self._cache_dir is not None else None
            self._cache = EmbeddingCache(folder, dim=self.dim)
        return self._cache

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Raw vectors for ``texts`` (any scale); one row per text."""

    @abstractmethod
    def truncate(self, text: str) -> tuple[str, bool]:
        """``(text that fits the encoder window, whether anything was cut)``."""

    def key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.name}\0{text}".encode()).digest()[:16]

    def encode(self, texts: Sequence[str], *, persist: bool = True) -> np.ndarray:
        """Unit vectors for ``texts`` (already truncated), cache hits first, misses batched.

        ``persist=False`` keeps new vectors in a bounded in-memory LRU only (for requests, so the
        on-disk cache holds routing examples, not traffic).
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [self.key(t) for t in texts]
        missing: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            vec = self.cache.get(k)
            if vec is None:
                missing.setdefault(k, []).append(i)
            else:
                out[i] = vec
        if missing:
            todo = [texts[idx[0]] for idx in missing.values()]
            vecs = self._normalised(todo)
            self.cache.put(list(missing), vecs, persist=persist)
            for row, idx in zip(vecs, missing.values(), strict=True):
                out[idx] = row
        return out

    def _normalised(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.embedded += len(texts)
        vecs = np.asarray(self._embed(texts), dtype=np.float32)
        if vecs.shape != (len(texts), self.dim):
            raise EncoderError(
                f"encoder {self.name!r} returned shape {vecs.shape} for {len(texts)} texts; "
                f"expected ({len(texts)}, {self.dim})"
            )
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
