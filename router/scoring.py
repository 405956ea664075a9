"""Per-route scores for query vectors.

Four scorers were measured on CLINC150 (150 routes, MiniLM, thresholds fitted on val with
its out-of-scope queries, measured on test; ``benchmarks/bench_router.py``, results in
``benchmarks/results/router.md``). In-scope accuracy with threshold / OOS recall / AUROC:

==========================  =====================  =====================
scorer                      K=10 examples/route    K=50 examples/route
==========================  =====================  =====================
knn (mean of top-3 sims)    79.0 / 68.5 / 0.942    86.4 / 74.8 / 0.961
centroid (cosine)           82.6 / 71.6 / 0.953    89.2 / 72.3 / 0.964
head (logistic)             91.1 / 69.6 / 0.956    93.4 / 69.5 / 0.962
hybrid (head + centroid)    90.4 / 80.3 / 0.964    92.2 / 82.3 / 0.971
==========================  =====================  =====================

``hybrid`` is the default: a logistic head (trained on the routing examples, plus the fit
data with an explicit out-of-scope class once :meth:`Router.fit` ran) decides *which* route,
because it learns what separates neighbouring intents, which nearest-neighbour similarity
cannot; but a softmax is confident far from all data, so the score adds the cosine to the
route's centroid, which falls for requests unlike every route. The sum separates in-scope
from out-of-scope requests best (highest AUROC at both K), so along the accuracy / abstention
trade-off it dominates: the head alone, at the same val-picked weight, lands on a point with
~1 point more accuracy but 11-13 points less OOS recall, and the hybrid reaches that accuracy
too at a lower weight (see the operating points in ``router.md``). kNN over the
FAISS index is kept as a scorer and supplies the evidence (nearest examples) of every decision.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .head import LogisticHead
from .index import VectorIndex

Scoring = Literal["hybrid", "head", "centroid", "knn"]
SCORINGS: tuple[str, ...] = ("hybrid", "head", "centroid", "knn")

#: Unfitted default thresholds per scorer (fit() replaces them), for unit-vector encoders.
DEFAULT_THRESHOLDS: dict[str, float] = {"hybrid": 1.0, "head": 0.5, "centroid": 0.45, "knn": 0.5}


def centroids(vectors: np.ndarray, route_ids: np.ndarray, n_routes: int) -> np.ndarray:
    out = np.zeros((n_routes, vectors.shape[1]), np.float32)
    np.add.at(out, route_ids, vectors)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def knn_scores(
    index: VectorIndex, route_ids: np.ndarray, n_routes: int, queries: np.ndarray, m: int = 3
) -> np.ndarray:
    """Per route, the mean of its ``m`` most similar examples among the retrieved neighbours.

    Routes with fewer than ``m`` retrieved examples are padded with the lowest retrieved
    similarity (an upper bound on what was not retrieved).
    """
    k = min(index.size, max(32, 8 * m))
    sims, ids = index.search(queries, k)
    out = np.empty((len(queries), n_routes), np.float32)
    for i in range(len(queries)):
        floor = float(sims[i, -1]) if sims.shape[1] else -1.0
        acc = np.zeros(n_routes, np.float32)
        cnt = np.zeros(n_routes, np.int32)
        for s, j in zip(sims[i], ids[i], strict=True):
            if j < 0:
                continue
            r = route_ids[j]
            if cnt[r] < m:
                acc[r] += s
                cnt[r] += 1
        out[i] = (acc + (m - cnt) * floor) / m
    return out


def route_scores(
    scoring: str,
    queries: np.ndarray,
    *,
    cents: np.ndarray,
    head: LogisticHead | None,
    index: VectorIndex | None,
    route_ids: np.ndarray,
    n_routes: int,
) -> np.ndarray:
    """``(n, n_routes)`` scores, higher = more likely that route."""
    if n_routes == 0 or len(queries) == 0:
        return np.zeros((len(queries), n_routes), np.float32)
    if scoring == "centroid":
        return queries @ cents.T
    if scoring == "knn":
        if index is None:
            raise ValueError("knn scoring needs an index")
        return knn_scores(index, route_ids, n_routes, queries)
    if head is None:  # one route: nothing to tell apart, the head is certain
        probs = np.ones((len(queries), n_routes), np.float32)
    else:
        probs = head.predict_proba(queries)[:, :n_routes]  # column n_routes = out of scope
    if scoring == "head":
        return probs
    return probs + queries @ cents.T
