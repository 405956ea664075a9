"""What the router derives from one revision of its routes, and per-batch scratch arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head import LogisticHead
from .index import VectorIndex
from .routes import Route


@dataclass
class _Compiled:
    """Everything derived from one revision of the routes."""

    revision: str | None
    routes: list[Route]  # routable, sorted by name
    unroutable: list[Route]
    ex_text: list[str]
    ex_route: np.ndarray
    ex_vec: np.ndarray
    index: VectorIndex | None  # over the neighbours: routing examples, then fit requests
    cents: np.ndarray
    head: LogisticHead | None
    digest: str
    ex_index: VectorIndex | None  # over the routing examples alone
    nb_text: list[str]  # texts and routes of the index's rows
    nb_route: np.ndarray

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.routes]


@dataclass
class _Batch:
    """Per unique turn text of one ``route_batch`` call: its row in the batch's arrays."""

    rows: dict[str, int]
    scores: np.ndarray  # (texts, routes)
    cut: list[bool]  # truncated to the encoder window
    ev_sims: np.ndarray  # (texts, n_evidence) nearest neighbours
    ev_ids: np.ndarray
    thresholds: np.ndarray  # (routes,)
    vecs: np.ndarray | None = None  # (texts, dim) the texts' embeddings


__all__ = ["_Batch", "_Compiled"]
