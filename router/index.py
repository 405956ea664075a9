"""FAISS inner-product index over all routing examples (unit vectors: inner product = cosine).

Small sets use an exact ``IndexFlatIP``. Above ``hnsw_threshold`` vectors an ``IndexHNSWFlat``
is built instead, and its recall@k against the exact index is measured on a sample of the
indexed vectors; if it falls below ``min_recall``, ``efSearch`` is doubled until it does (or
the exact index is kept).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw"]


class VectorIndex:
    """Example::

    >>> import numpy as np
    >>> x = np.eye(4, dtype="float32")
    >>> sims, ids = VectorIndex(x).search(x[:1], 2)
    >>> int(ids[0, 0])
    0
    """

    def __init__(
        self,
        vectors: np.ndarray,
        *,
        kind: IndexKind = "auto",
        hnsw_threshold: int = 20_000,
        hnsw_m: int = 32,
        min_recall: float = 0.98,
        recall_sample: int = 200,
        recall_k: int = 10,
        seed: int = 0,
    ) -> None:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"index vectors must be 2-D, got shape {vectors.shape}")
        self.size, self.dim = vectors.shape
        use_hnsw = kind == "hnsw" or (kind == "auto" and self.size > hnsw_threshold)
        self.recall: float | None = None
        self.kind = "flat"
        flat = faiss.IndexFlatIP(self.dim)
        flat.add(vectors)
        self._index: Any = flat
        if use_hnsw and self.size > 0:
            hnsw = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 80
            hnsw.add(vectors)
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(self.size, min(recall_sample, self.size), replace=False)]
            k = min(recall_k, self.size)
            _, exact = flat.search(sample, k)
            ef = 64
            while True:
                hnsw.hnsw.efSearch = ef
                _, approx = hnsw.search(sample, k)
                recall = float(
                    np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)])
                )
                if recall >= min_recall or ef >= 1024:
                    break
                ef *= 2
            self.recall = recall
            if recall >= min_recall:
                self._index, self.kind = hnsw, "hnsw"
                logger.info(
                    "HNSW index over %d vectors: recall@%d %.3f (efSearch %d)",
                    self.size,
                    k,
                    recall,
                    ef,
                )
            else:
                logger.warning(
                    "HNSW recall@%d only %.3f at efSearch %d; keeping the exact index",
                    k,
                    recall,
                    ef,
                )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, ids)``, each ``(n, min(k, size))``, best first."""
        k = min(k, self.size)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self._index.search(q, k)
