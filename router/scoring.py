"""Per-route scores for query vectors.

``auto`` is the default: ``hybrid`` (a logistic head trained on the routing examples and the fit
data with an explicit out-of-scope class, plus the cosine to the route's centroid) until
:meth:`Router.fit` calibrated thresholds on labelled requests; ``fit`` then weighs ``knn`` (the
mean similarity of a route's ``m`` nearest neighbours, ``m`` from :data:`KNN_M_CHOICES`; once
fitted the neighbours are the routing examples plus the in-scope fit requests) against
``hybrid`` on held-out folds and keeps the best by the calibration objective. knn abstains
well with no out-of-scope training data ("far from every labelled in-scope request"), but its
unfitted default threshold is a guess, so the hybrid is the safer scorer before a fit. ``head``
and ``centroid`` remain as options. Why, with the figures: benchmarks/results/router_scorers.md
(measured with ``benchmarks/bench_router.py`` on CLINC150).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .head import LogisticHead
from .index import VectorIndex

Scoring = Literal["auto", "knn", "hybrid", "head", "centroid"]
SCORINGS: tuple[str, ...] = ("auto", "knn", "hybrid", "head", "centroid")
#: ``auto``: hybrid until fitted, then knn or hybrid, whichever scores best on held-out folds.
DEFAULT_SCORING = "auto"
#: Neighbours averaged per route by the knn scorer before a fit (and with few fit samples).
KNN_M = 3
#: The neighbour counts ``fit`` chooses from on held-out folds. More neighbours smooth a
#: route's score when it has many (routing examples plus fit requests); fewer keep small routes
#: from being averaged with far examples. CLINC150 val, cross-fitted, acc + 0.25 x recall:
#: K=50 m=3 1.180, m=5 1.183, m=10 1.169; K=10 m=3 1.183, m=5 1.183, m=10 1.180.
KNN_M_CHOICES = (3, 5, 10)


def effective_scorer(scoring: str, fitted: bool) -> str:
    """The scorer that ``scoring`` means for a router that is (not) fitted (for ``auto``
    after a fit, the first candidate; ``Router.fit`` picks the one it keeps)."""
    if scoring == "auto":
        return "knn" if fitted else "hybrid"
    return scoring


#: Unfitted default thresholds per scorer (fit() replaces them), for unit-vector encoders.
#: knn's: MiniLM on CLINC150 val, routing examples only, where the weighted objective put the
#: threshold at 0.24 (K=10) and 0.32 (K=50); the lower end, since unfitted means few examples.
DEFAULT_THRESHOLDS: dict[str, float] = {"hybrid": 1.0, "head": 0.5, "centroid": 0.45, "knn": 0.25}


def centroids(vectors: np.ndarray, route_ids: np.ndarray, n_routes: int) -> np.ndarray:
    out = np.zeros((n_routes, vectors.shape[1]), np.float32)
    np.add.at(out, route_ids, vectors)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def knn_k(index: VectorIndex, m: int) -> int:
    """How many neighbours the knn scorer retrieves per query."""
    return min(index.size, max(32, 8 * m))


def knn_scores(
    index: VectorIndex,
    route_ids: np.ndarray,
    n_routes: int,
    queries: np.ndarray,
    m: int = KNN_M,
    hits: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per route, the mean of its ``m`` most similar examples among the retrieved neighbours.

    A route with fewer than ``m`` examples in all averages the ones it has (padding would
    penalise small routes). Routes with fewer retrieved examples than that are padded with
    the lowest retrieved similarity (an upper bound on what was not retrieved). Vectorised
    over queries: a per-neighbour Python loop cost more than the search in large batches.
    ``hits``: ``index.search(queries, k)`` already done, ``k >= knn_k(index, m)`` (the router
    shares one search between scoring and evidence).
    """
    sims, ids = hits if hits is not None else index.search(queries, knn_k(index, m))
    n = len(queries)
    if sims.shape[1] == 0:
        return np.full((n, n_routes), -1.0, np.float32)
    m_route = np.minimum(m, np.maximum(np.bincount(route_ids, minlength=n_routes), 1))
    valid = ids >= 0
    routes = np.where(valid, route_ids[np.where(valid, ids, 0)], 0)
    onehot = (routes[:, :, None] == np.arange(n_routes)) & valid[:, :, None]  # (n, k, R)
    # Neighbours come best first, so a route's first hits are its most similar examples.
    take = onehot & (np.cumsum(onehot, axis=1) <= m_route)
    total = np.einsum("nk,nkr->nr", sims, take.astype(np.float32))
    count = take.sum(axis=1)
    floor = sims[:, -1:]
    return ((total + (m_route - count) * floor) / m_route).astype(np.float32)


def route_scores(
    scoring: str,
    queries: np.ndarray,
    *,
    cents: np.ndarray,
    head: LogisticHead | None,
    index: VectorIndex | None,
    route_ids: np.ndarray,
    n_routes: int,
    m: int = KNN_M,
    hits: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``(n, n_routes)`` scores, higher = more likely that route (``scoring`` is an effective
    scorer, not ``auto``; ``m`` is knn's neighbour count)."""
    if n_routes == 0 or len(queries) == 0:
        return np.zeros((len(queries), n_routes), np.float32)
    if scoring == "centroid":
        return queries @ cents.T
    if scoring == "knn":
        if index is None:
            raise ValueError("knn scoring needs an index")
        return knn_scores(index, route_ids, n_routes, queries, m, hits)
    if head is None:  # one route: nothing to tell apart, the head is certain
        probs = np.ones((len(queries), n_routes), np.float32)
    else:
        probs = head.predict_proba(queries)[:, :n_routes]  # column n_routes = out of scope
    if scoring == "head":
        return probs
    return probs + queries @ cents.T
