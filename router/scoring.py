"""Per-route scores for query vectors.

Four scorers, measured on CLINC150's domain protocol (10 domains as routes, K routing examples
per domain, thresholds fitted on val with its out-of-scope queries, measured once on test;
``benchmarks/bench_router.py``, results in ``benchmarks/results/router.md``).

``auto`` is the default: ``hybrid`` until :meth:`Router.fit` calibrated thresholds on
labelled requests; ``fit`` then weighs ``knn`` (neighbour count ``m`` from
:data:`KNN_M_CHOICES`) against ``hybrid`` on held-out folds and keeps the best by the
calibration objective. ``knn`` scores a route by the mean similarity of its ``m`` nearest
neighbours, and once fitted the neighbours are the routing examples *plus the in-scope
labelled fit requests* (out-of-scope ones never become neighbours). On CLINC150's 10 domains
(300 labelled requests a route) knn wins; on its 150 intents (20 a route) the hybrid's head
does (val, cross-fitted, acc + 0.25 x recall, K=10: hybrid 1.182 vs knn 1.134), so neither is
right for every router and the fit data decides. Why knn wins with enough labelled requests:

- Which route: labelled requests are real traffic, phrased like the requests to route, and
  there are usually many more of them than routing examples (CLINC150 val: 300 a domain).
  A nearest-neighbour vote over them is not limited to one linear boundary per route, so on
  cross-fitted val scores it was right more often than the logistic head trained on the same
  data (97.0% vs 94.8-95.1% before thresholds, K=10 and K=50).
- When to abstain: "far from every labelled in-scope request" is the out-of-scope signal that
  transfers. The head learns its out-of-scope class from the few fit samples labelled ``None``
  (100 on CLINC150), and a softmax is confident far from all data; the head's and hybrid's
  AUROC (in-scope vs out-of-scope) of 0.94-0.95 on val fell to 0.87-0.90 on test, kNN's
  went from 0.98 to 0.95: it needs no out-of-scope training data at all.

Why not knn before a fit: its score is on another scale than the hybrid's, and its unfitted
default threshold (0.25) is a guess that sits on the score of clear in-domain questions when a
route has only a few examples (MiniLM gives 0.2499 for "How much is 15% of 240?" against four
mixed maths examples). The hybrid's head separates the routes with no threshold to calibrate
(its default 1.0 means "head probability + centroid cosine"), so it is the safer unfitted
scorer; after ``fit`` the thresholds are calibrated on knn's own scores.

Val, cross-fitted (what the choice was made on; in-scope accuracy with threshold / OOS recall
/ AUROC; the test figures are in ``router.md``):

===========================================  =====================  =====================
scorer                                       K=10 examples/route    K=50 examples/route
===========================================  =====================  =====================
hybrid (head + centroid; default unfitted)   93.9 / 80.0 / 0.938    93.0 / 84.0 / 0.949
knn, routing examples + fit requests, m=3    95.3 / 92.0 / 0.983    95.2 / 91.0 / 0.982
knn, same, m=5                               95.5 / 91.0 / -        95.8 / 90.0 / -
===========================================  =====================  =====================

(knn plus 0.1 x head probabilities scored the same within the noise of 100 OOS requests and
was not taken: it adds the head's dependence on the out-of-scope samples.) Without fit data,
knn over the routing examples alone is also at least as good as the hybrid (val, before
thresholds: 73.6% vs 74.0% accuracy at K=10, 89.6% vs 88.1% at K=50; AUROC 0.91 vs 0.84 and
0.95 vs 0.90): the case against it unfitted is its threshold, not its ranking. ``hybrid``
(a logistic head, trained on the examples and the fit data with an explicit out-of-scope
class, plus the cosine to the route's centroid), ``head`` and ``centroid`` remain as options.
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
