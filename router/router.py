"""The embedding router: which adapter (if any) should the base model wear for a request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidMessagesError
from ..messages import user_turns
from ..settings import Settings, get_settings
from ._compiled import _Batch, _Compiled
from .calibration import DEFAULT_OOS_WEIGHT, Calibration, calibrate, check_objective
from .context import ContextConfig, TurnScores, route_conversation
from .decision import Evidence, RouteDecision
from .encoders import Encoder, load_encoder
from .errors import InvalidRequestError, NotFittedError, RouterError, RouterStateError
from .head import LogisticHead
from .index import VectorIndex
from .routes import Route, RouteSource, StaticRoutes, route_set_digest
from .scoring import (
    DEFAULT_SCORING,
    DEFAULT_THRESHOLDS,
    KNN_M,
    KNN_M_CHOICES,
    SCORINGS,
    centroids,
    effective_scorer,
    knn_k,
    route_scores,
)
from .state import STALE_POLICIES, FitData, SavedState, read_state, write_state

logger = logging.getLogger(__name__)


def _open_source(registry: Any, settings: Settings) -> RouteSource:
    if registry is None or isinstance(registry, (str, Path)):
        try:
            from ..registry import open_registry
        except ImportError as exc:
            raise RouterError(
                "no registry given and loraroute.registry cannot be imported; pass "
                "registry=<RouteSource> or build with Router.from_examples(...)"
            ) from exc
        return open_registry(None if registry is None else str(registry), settings=settings)
    if isinstance(registry, RouteSource):
        return registry
    raise RouterError(
        f"registry must be a registry URL, a registry object or a RouteSource (with serving() "
        f"and revision()), got {type(registry).__name__}"
    )


class Router:
    """Routes requests to adapters, falling back to the base model (``adapter=None``).

    Example::

        >>> r = Router.from_examples(
        ...     {"legal": ["is this contract clause enforceable?", "what does indemnify mean"],
        ...      "math": ["solve 2x + 3 = 7", "what is the derivative of x squared"]},
        ...     encoder="hashing")
        >>> r.route("solve 2x + 5 = 9").adapter
        'math'
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        encoder: str | Encoder | None = "all-minilm-l6-v2",
        alias: str | None = None,
        settings: Settings | None = None,
        scoring: str = DEFAULT_SCORING,
        threshold: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        oos_weight: float = DEFAULT_OOS_WEIGHT,
        min_oos_recall: float | None = None,
        context: ContextConfig | None = None,
        refresh_interval: float = 1.0,
        index_kind: str = "auto",
        n_evidence: int = 3,
        n_alternatives: int = 3,
        knn_m: int | None = None,
    ) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
        if knn_m is not None and knn_m < 1:
            raise ValueError(f"knn_m must be a positive number of neighbours, got {knn_m}")
        self.settings = settings or get_settings()
        self.source = _open_source(registry, self.settings)
        self.encoder = load_encoder(
            encoder, settings=self.settings, cache_dir=self.settings.cache_dir / "embeddings"
        )
        #: Only versions this alias points to are routes (default: the serving alias, prod).
        self.alias = alias or self.settings.serving_alias
        #: What was asked for (``auto`` included); :attr:`scorer` is what scores now.
        self.scoring = scoring
        self.scorer = effective_scorer(scoring, fitted=False)
        #: knn's neighbour count; ``None`` asked: :data:`KNN_M`, then chosen by :meth:`fit`.
        self.knn_m = KNN_M if knn_m is None else int(knn_m)
        self._choose_m = knn_m is None
        #: The last fit's objective value per candidate scorer (held-out folds), for reports.
        self.fit_candidates: dict[str, float] = {}
        check_objective(oos_weight, min_oos_recall)
        #: Calibration objective used by :meth:`fit`: with ``min_oos_recall`` set, maximise
        #: in-scope accuracy subject to out-of-scope recall >= it on the fit data; otherwise
        #: maximise ``in-scope accuracy + oos_weight * out-of-scope recall``.
        self.oos_weight = float(oos_weight)
        self.min_oos_recall = None if min_oos_recall is None else float(min_oos_recall)
        self.context = context or ContextConfig()
        self.refresh_interval = refresh_interval
        self.index_kind = index_kind
        self.n_evidence = n_evidence
        self.n_alternatives = n_alternatives
        default_t = DEFAULT_THRESHOLDS[self.scorer] if threshold is None else threshold
        self.calibration = Calibration(default_t)
        self.overrides: dict[str, float] = dict(thresholds or {})
        self.fit_data: FitData | None = None
        self._fit_digest: str | None = None
        self._oof: tuple | None = None  # out-of-fold (pred, score, gold, names) of the last fit
        self._lock = threading.RLock()
        self._warned: set[str] = set()  # refs already reported as live but unroutable
        self._checked_at = 0.0
        self._compiled: _Compiled | None = None
        self.refresh(force=True)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_examples(
        cls,
        examples: Mapping[str, Sequence[str]],
        *,
        encoder: str | Encoder | None = None,
        **kwargs: Any,
    ) -> Router:
        """A router over plain data: ``{"legal": [...], "math": [...]}``."""
        return cls(StaticRoutes(examples), encoder=encoder or "all-minilm-l6-v2", **kwargs)

    @classmethod
    def open(
        cls,
        registry: Any = None,
        *,
        alias: str | None = None,
        settings: Settings | None = None,
        **kwargs: Any,
    ) -> Router:
        """A router over ``registry`` with the state ``adapters route fit`` saved, if any.

        Its routes are the live versions: those ``alias`` (default: the serving alias,
        ``prod``) points to. The state lives under ``<settings.home>/router/<alias>``; without
        one the router is unfitted (default thresholds). The router follows the registry's
        revision, so a version promoted later is routed to without reopening it.
        """
        settings = settings or get_settings()
        alias = alias or settings.serving_alias
        state = settings.home / "router" / alias
        if (state / "state.json").is_file():
            return cls.load(state, registry, alias=alias, settings=settings, **kwargs)
        return cls(registry, alias=alias, settings=settings, **kwargs)

    # -- routes -------------------------------------------------------------------------
    @property
    def routes(self) -> list[Route]:
        """Routable routes (adapters with routing examples)."""
        return list(self._state().routes)

    @property
    def unroutable(self) -> list[Route]:
        """Adapters served under the alias but without routing examples: never routed to."""
        return list(self._state().unroutable)

    @property
    def route_digest(self) -> str:
        return self._state().digest

    @property
    def fitted(self) -> bool:
        return self.fit_data is not None

    def _state(self) -> _Compiled:
        self.refresh()
        if self._compiled is None:  # pragma: no cover - refresh(force=True) ran in __init__
            raise RouterError("router has no compiled routes")
        return self._compiled

    def refresh(self, force: bool = False) -> bool:
        """Rebuild when the source's ``revision()`` changed; returns whether it rebuilt.

        Checks at most every ``refresh_interval`` seconds (0: on every call), so routing
        stays cheap; unchanged routing examples come from the embedding cache.
        """
        now = time.monotonic()
        if not force and now - self._checked_at < self.refresh_interval:
            return False
        with self._lock:
            self._checked_at = now
            rev = self.source.revision()
            old = self._compiled
            if not force and old is not None and rev == old.revision:
                return False
            served = self._served()
            if not force and old is not None and served == old.routes + old.unroutable:
                # e.g. a push nobody promoted: the live routes are the same, keep everything
                self._compiled = replace(old, revision=rev)
                return False
            compiled = self._compile(rev, served)
            same_routes = compiled.digest == self._fit_digest
            if self.fit_data is not None and same_routes:  # a new revision, the fit still holds
                compiled = self._attach_fit(compiled, self.fit_data)
            self._compiled = compiled
            if self.fit_data is not None and not same_routes:
                logger.info("routes changed since fit; re-fitting from the stored fit data")
                self._fit(self.fit_data)
            return True

    def _served(self) -> list[Route]:
        """The live routes, routable ones first, each group sorted by name."""
        versions = self.source.serving(self.alias)
        all_routes = sorted((Route.from_version(v) for v in versions), key=lambda r: r.name)
        return [r for r in all_routes if r.routable] + [r for r in all_routes if not r.routable]

    def _compile(self, revision: str | None, served: list[Route] | None = None) -> _Compiled:
        served = self._served() if served is None else served
        routes = [r for r in served if r.routable]
        unroutable = [r for r in served if not r.routable]
        if not served and "" not in self._warned:
            self._warned.add("")  # said once: an upgraded registry may have nothing promoted
            logger.warning(
                "no version holds the alias %r, so model='auto' answers every request with the "
                "base model; promote adapters with 'adapters alias set NAME %s VERSION'",
                self.alias,
                self.alias,
            )
        for r in unroutable:
            if (r.ref or r.name) in self._warned:
                continue  # said once per version, not on every refresh
            self._warned.add(r.ref or r.name)
            logger.warning(
                "adapter %s is live (alias %r) but has no routing examples, so model='auto' "
                "never routes to it (it still answers when named); to route to it, push a "
                "version with examples (adapters push FOLDER --name %s --example TEXT ... "
                "--alias %s)",
                r.ref or r.name,
                self.alias,
                r.name,
                self.alias,
            )
        texts = [t for r in routes for t in r.examples]
        route_ids = np.array([i for i, r in enumerate(routes) for _ in r.examples], np.int64)
        vecs = (
            self.encoder.encode([self.encoder.truncate(t)[0] for t in texts])
            if texts
            else np.zeros((0, self.encoder.dim), np.float32)
        )
        index = VectorIndex(vecs, kind=self.index_kind) if len(texts) else None  # type: ignore[arg-type]
        cents = centroids(vecs, route_ids, len(routes))
        head = self._train_head(vecs, route_ids, len(routes)) if len(routes) > 1 else None
        digest = route_set_digest(routes, self.encoder.name)
        logger.info(
            "compiled %d routes (%d examples, %s index), revision %s",
            len(routes),
            len(texts),
            index.kind if index else "no",
            revision,
        )
        return _Compiled(
            revision,
            routes,
            unroutable,
            texts,
            route_ids,
            vecs,
            index,
            cents,
            head,
            digest,
            index,
            list(texts),
            route_ids,
        )

    def _train_head(self, x, y, n_routes, extra_x=None, extra_y=None) -> LogisticHead | None:
        # auto trains it whatever its current scorer: fit() weighs the hybrid again
        if (self.scorer not in ("hybrid", "head") and self.scoring != "auto") or n_routes < 2:
            return None
        if extra_x is not None and len(extra_x):
            x = np.concatenate([x, extra_x])
            y = np.concatenate([y, extra_y])
        n_classes = n_routes + (1 if (y == n_routes).any() else 0)
        return LogisticHead.train(x, y, n_classes=n_classes)

    # -- scoring ------------------------------------------------------------------------
    def _scores(
        self,
        st: _Compiled,
        vecs: np.ndarray,
        head: LogisticHead | None = None,
        m: int | None = None,
        hits: tuple[np.ndarray, np.ndarray] | None = None,
        scorer: str | None = None,
    ):
        return route_scores(
            scorer or self.scorer,
            vecs,
            cents=st.cents,
            head=head or st.head,
            index=st.index,
            route_ids=st.nb_route,
            n_routes=len(st.routes),
            m=m or self.knn_m,
            hits=hits,
        )

    def threshold_for(self, route: str) -> float:
        if route in self.overrides:
            return self.overrides[route]
        return self.calibration.threshold_for(route)

    def set_threshold(self, route: str | None, value: float) -> None:
        """Set one route's threshold (``route=None``: the global one)."""
        if route is None:
            self.calibration.threshold = float(value)
        else:
            self.overrides[route] = float(value)

    def _embed_requests(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        cut = [self.encoder.truncate(t) if t.strip() else (t, False) for t in texts]
        vecs = self.encoder.encode([c[0] for c in cut], persist=False)
        return vecs, [c[1] for c in cut]

    # -- routing ------------------------------------------------------------------------
    def route(self, request: str | Sequence[Any], *, previous: str | None = None) -> RouteDecision:
        """Decide for one request: a string or a conversation (list of messages).

        For a conversation, earlier user turns count with decaying weight and the previous
        route is kept unless a new one clearly wins (see :class:`ContextConfig`).
        """
        return self.route_batch([request], previous=[previous])[0]

    def route_batch(
        self,
        requests: Sequence[str | Sequence[Any]],
        *,
        previous: Sequence[str | None] | None = None,
    ) -> list[RouteDecision]:
        """Decide for many requests with one encoder call."""
        if isinstance(requests, str):
            raise InvalidRequestError("route_batch takes a list of requests, got one string")
        st = self._state()
        turns = [_user_turns(r)[-self.context.max_turns :] for r in requests]
        flat = [t for ts in turns for t in ts]
        nonempty = [t for t in flat if t.strip()]
        prev_list = list(previous) if previous is not None else [None] * len(requests)
        if len(prev_list) != len(requests):
            raise InvalidRequestError(
                f"previous has {len(prev_list)} entries for {len(requests)} requests"
            )
        if not (nonempty and st.routes):
            return [
                self._decide(st, ts, None, prev) for ts, prev in zip(turns, prev_list, strict=True)
            ]
        # One encoder call, one scoring call and one evidence search for the whole batch:
        # per-request scoring and search cost about as much as encoding on a busy CPU.
        uniq = list(dict.fromkeys(nonempty))
        vecs, cut = self._embed_requests(uniq)
        # knn's neighbours and the evidence come from one search of the same index
        index = st.index
        knn = self.scorer == "knn" and index is not None
        k = 0 if index is None else max(self.n_evidence, knn_k(index, self.knn_m) if knn else 0)
        hits = index.search(vecs, k) if index is not None and k else None
        ev_sims, ev_ids = np.zeros((len(uniq), 0), np.float32), np.zeros((len(uniq), 0), np.int64)
        if hits is not None and self.n_evidence:
            ev_sims, ev_ids = hits[0][:, : self.n_evidence], hits[1][:, : self.n_evidence]
        batch = _Batch(
            rows={t: i for i, t in enumerate(uniq)},
            scores=self._scores(st, vecs, hits=hits if knn else None),
            cut=cut,
            ev_sims=ev_sims,
            ev_ids=ev_ids,
            thresholds=np.array([self.threshold_for(n) for n in st.names], np.float32),
            vecs=vecs,
        )
        return [
            self._decide(st, ts, batch, prev) for ts, prev in zip(turns, prev_list, strict=True)
        ]

    def _decide(
        self, st, turns: list[str], batch: _Batch | None, prev: str | None
    ) -> RouteDecision:
        if not st.routes:
            return RouteDecision(None, None, None, 0.0, 1.0, reason="no_routes")
        if batch is None or not turns or not turns[-1].strip():
            return RouteDecision(None, None, None, 0.0, 1.0, reason="empty_request")
        rows = [batch.rows[t] for t in turns if t.strip()]
        scores = batch.scores[rows]
        names = st.names
        words = [len(t.split()) for t in turns if t.strip()]
        ts = TurnScores(scores=scores, thresholds=batch.thresholds, words=words)
        prev_idx = names.index(prev) if prev in names else None
        choice, score, reason = route_conversation(ts, self.context, prev_idx)
        last = scores[-1]
        best = int(np.argmax(last))
        order = [int(i) for i in np.argsort(-last)]
        shown = choice if choice is not None else best
        alternatives = [(names[i], float(last[i])) for i in order if i != shown][
            : self.n_alternatives
        ]
        evidence = [
            Evidence(names[st.nb_route[j]], st.nb_text[j], float(s))
            for s, j in zip(batch.ev_sims[rows[-1]], batch.ev_ids[rows[-1]], strict=True)
            if j >= 0
        ]
        truncated = bool(batch.cut[rows[-1]])
        emb = None if batch.vecs is None else batch.vecs[rows[-1]]
        if choice is None:
            t = self.threshold_for(names[best])
            conf = self.calibration.confidence(float(last[best]), t, routed=False)
            return RouteDecision(
                None,
                None,
                None,
                float(last[best]),
                conf,
                alternatives,
                evidence,
                truncated,
                reason,
                best=names[best],
                embedding=emb,
            )
        r = st.routes[choice]
        conf = self.calibration.confidence(score, self.threshold_for(r.name), routed=True)
        return RouteDecision(
            r.name,
            r.ref,
            r.digest,
            score,
            conf,
            alternatives,
            evidence,
            truncated,
            reason,
            best=names[best],
            embedding=emb,
        )

    def score_texts(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """``(route names, (n, routes) score matrix)`` for single-turn texts (evaluation)."""
        st = self._state()
        if not st.routes:
            return [], np.zeros((len(texts), 0), np.float32)
        vecs, _ = self._embed_requests([t if t.strip() else " " for t in texts])
        return st.names, self._scores(st, vecs)

    # -- fitting ------------------------------------------------------------------------
    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str | None],
        *,
        folds: int = 5,
        oos_weight: float | None = None,
        min_oos_recall: float | None = None,
    ) -> dict:
        """Calibrate thresholds (and the head) on labelled requests; ``None`` = out of scope.

        Labels that name no routable adapter count as out of scope (and are reported). The
        in-scope requests join the routing examples as neighbours (the knn scorer's evidence
        and votes); the hybrid and head scorers also train their head on them. Both are
        cross-fitted: thresholds are picked on scores of held-out folds, then the neighbours
        and the head take everything. ``min_oos_recall=R`` picks thresholds with the best
        in-scope accuracy whose out-of-scope recall on this data is at least ``R``;
        ``oos_weight=w`` the weighted objective (see :mod:`loraroute.router.calibration`).
        Either one replaces the router's objective; neither keeps it. Returns a small report
        with the figures on the fit data.

        Example::

            >>> r = Router.from_examples(
            ...     {"legal": ["is this contract clause enforceable"],
            ...      "math": ["solve 2x + 3 = 7"]}, encoder="hashing")
            >>> rep = r.fit(["is the lease clause enforceable", "solve x + 1 = 2",
            ...              "book a flight", "what time is it"],
            ...             ["legal", "math", None, None], min_oos_recall=0.5)
            >>> rep["fit_oos_recall"] >= 0.5
            True
        """
        if len(texts) != len(labels):
            raise InvalidRequestError(f"fit got {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise InvalidRequestError("fit needs at least one labelled text")
        weight, floor = self._objective(oos_weight, min_oos_recall)
        if floor is not None and not self._has_oos(texts, labels):
            raise InvalidRequestError(
                f"min_oos_recall={floor} needs out-of-scope examples in the fit data (label "
                f"null/None, or a label naming no routable adapter), and there are none; add "
                f"some, or calibrate with oos_weight instead"
            )
        with self._lock:
            self.oos_weight, self.min_oos_recall = weight, floor
            return self._fit(FitData(list(texts), list(labels)), folds=folds)

    def _objective(
        self, oos_weight: float | None, min_oos_recall: float | None
    ) -> tuple[float, float | None]:
        """The ``(oos_weight, min_oos_recall)`` pair a fit or recalibration should use."""
        if oos_weight is not None and min_oos_recall is not None:
            raise InvalidRequestError(
                "give either oos_weight (weighted objective) or min_oos_recall (accuracy subject "
                "to a recall floor), not both"
            )
        if oos_weight is not None:
            check_objective(oos_weight, None)
            return float(oos_weight), None
        if min_oos_recall is not None:
            check_objective(self.oos_weight, min_oos_recall)
            return self.oos_weight, float(min_oos_recall)
        return self.oos_weight, self.min_oos_recall

    def _has_oos(self, texts: Sequence[str], labels: Sequence[str | None]) -> bool:
        names = set(self._state().names)
        return any(t.strip() and lab not in names for t, lab in zip(texts, labels, strict=True))

    def _fit_vectors(
        self, st: _Compiled, data: FitData
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(texts, vectors, gold route index or -1)`` of the non-empty fit samples."""
        pos = {n: i for i, n in enumerate(st.names)}
        keep = [i for i, t in enumerate(data.texts) if t.strip()]
        texts = [self.encoder.truncate(data.texts[i])[0] for i in keep]
        labels = [data.labels[i] for i in keep]
        gold = np.array([pos.get(lab, -1) if lab is not None else -1 for lab in labels], np.int64)
        return texts, self.encoder.encode(texts), gold

    def _with_neighbours(
        self, st: _Compiled, texts: list[str], vecs: np.ndarray, gold: np.ndarray
    ) -> _Compiled:
        """``st`` whose index holds the routing examples plus the in-scope fit requests.

        Out-of-scope requests never become neighbours: the knn scorer's abstention signal
        is the distance to in-scope traffic (see :mod:`loraroute.router.scoring`).
        """
        ins = np.flatnonzero(gold >= 0)
        if not len(ins):
            return replace(st, index=st.ex_index, nb_text=list(st.ex_text), nb_route=st.ex_route)
        nb_vec = np.concatenate([st.ex_vec, vecs[ins]])
        return replace(
            st,
            index=VectorIndex(nb_vec, kind=self.index_kind),  # type: ignore[arg-type]
            nb_text=st.ex_text + [texts[i] for i in ins],
            nb_route=np.concatenate([st.ex_route, gold[ins]]),
        )

    def _attach_fit(
        self, st: _Compiled, data: FitData, fitted=None, *, train_head: bool = True
    ) -> _Compiled:
        """``st`` with the fitted parts: neighbour index and (optionally) head.

        A new object, so that requests routed meanwhile see the old state or the new one,
        never a mix. ``fitted`` is ``_fit_vectors``' result when the caller has it already.
        """
        texts, vecs, gold = fitted if fitted is not None else self._fit_vectors(st, data)
        out = self._with_neighbours(st, texts, vecs, gold)
        n_routes = len(st.routes)
        if train_head and self.scorer in ("hybrid", "head") and n_routes > 1:
            head_y = np.where(gold < 0, n_routes, gold)
            out.head = self._train_head(st.ex_vec, st.ex_route, n_routes, vecs, head_y)
        return out

    def _fit(self, data: FitData, folds: int = 5) -> dict:
        st = self._compiled
        self.scorer = effective_scorer(self.scoring, fitted=True)
        if st is None or not st.routes:
            self.fit_data, self._fit_digest = data, st.digest if st else None
            return {"routes": 0}
        names = st.names
        unknown = sorted({lab for lab in data.labels if lab is not None and lab not in names})
        if unknown:
            logger.warning(
                "fit labels name no routable adapter, treated as out of scope: %s",
                ", ".join(unknown),
            )
        fitted = self._fit_vectors(st, data)
        texts, vecs, gold = fitted
        n_routes = len(names)
        head_y = np.where(gold < 0, n_routes, gold)
        has_ins = bool((gold >= 0).any())
        # Candidates (scorer, knn's m), tried on the same folds; the best by the calibration
        # objective wins, the first on ties. auto: knn and the hybrid (see scoring.py).
        scorers: tuple[str, ...] = ("knn", "hybrid") if self.scoring == "auto" else (self.scorer,)
        if n_routes < 2:
            scorers = tuple(sc for sc in scorers if sc != "hybrid") or scorers
        uses_head = n_routes > 1 and any(sc in ("hybrid", "head") for sc in scorers)
        uses_neighbours = "knn" in scorers and has_ins
        cross = (uses_head or uses_neighbours) and len(gold) >= 2 * folds
        if not self._choose_m:
            ms: tuple[int, ...] = (self.knn_m,)
        else:
            ms = KNN_M_CHOICES if cross and uses_neighbours else (KNN_M,)
        cands = [(sc, m) for sc in scorers for m in (ms if sc == "knn" else (self.knn_m,))]
        base = self._with_neighbours(st, [], vecs[:0], gold[:0])  # routing examples only
        scores = {c: np.zeros((len(gold), n_routes), np.float32) for c in cands}
        if cross:
            # Cross-fitted: each fold is scored by a head / neighbour set without its samples,
            # so thresholds (and the scorer and knn's neighbour count) are picked on scores
            # like those of new requests.
            rng = np.random.default_rng(0)
            fold = rng.permutation(len(gold)) % folds
            for f in range(folds):
                tr = fold != f
                head = None
                if uses_head:
                    head = self._train_head(st.ex_vec, st.ex_route, n_routes, vecs[tr], head_y[tr])
                fold_st = base
                if uses_neighbours:
                    fold_texts = [t for t, keep in zip(texts, tr, strict=True) if keep]
                    fold_st = self._with_neighbours(st, fold_texts, vecs[tr], gold[tr])
                for sc, m in cands:
                    scores[sc, m][~tr] = self._scores(fold_st, vecs[~tr], head=head, m=m, scorer=sc)
        else:
            for sc, m in cands:
                scores[sc, m] = self._scores(base, vecs, m=m, scorer=sc)
        floor = self.min_oos_recall
        if floor is not None and not (gold < 0).any():  # routes changed under a stored fit
            logger.warning(
                "min_oos_recall=%s but the fit data has no out-of-scope samples for the current "
                "routes; using the weighted objective (oos_weight=%s)",
                floor,
                self.oos_weight,
            )
            floor = None
        chosen: tuple[float, tuple[str, int], Calibration, np.ndarray] | None = None
        self.fit_candidates = {}
        for c in cands:
            pred = scores[c].argmax(axis=1)
            best = scores[c].max(axis=1)
            cal = calibrate(
                pred, best, gold, names, oos_weight=self.oos_weight, min_oos_recall=floor
            )
            value = (cal.fit_in_scope_accuracy or 0.0) + (
                self.oos_weight * (cal.fit_oos_recall or 0.0) if floor is None else 0.0
            )
            self.fit_candidates[f"{c[0]}" + (f" m={c[1]}" if c[0] == "knn" else "")] = value
            if chosen is None or value > chosen[0] + 1e-9:
                chosen = (value, c, cal, scores[c])
        assert chosen is not None
        _, (self.scorer, self.knn_m), self.calibration, picked = chosen
        self._oof = (picked.argmax(axis=1), picked.max(axis=1), gold, names)
        self._compiled = self._attach_fit(st, data, fitted)
        self.fit_data, self._fit_digest = data, st.digest
        ins = gold >= 0
        return {
            "routes": n_routes,
            "samples": int(len(gold)),
            "out_of_scope": int((~ins).sum()),
            "unknown_labels": unknown,
            "threshold": self.calibration.threshold,
            "route_thresholds": len(self.calibration.route_thresholds),
            "objective": self.calibration.objective,
            "fit_in_scope_accuracy": self.calibration.fit_in_scope_accuracy,
            "fit_oos_recall": self.calibration.fit_oos_recall,
            "scorer": self.scorer,
            "knn_m": self.knn_m if self.scorer == "knn" else None,
            "candidates": dict(self.fit_candidates),
        }

    def recalibrate(
        self, oos_weight: float | None = None, *, min_oos_recall: float | None = None
    ) -> Calibration:
        """Pick thresholds again for another accuracy / abstention trade-off, without re-fitting.

        ``min_oos_recall=R``: the best in-scope accuracy with out-of-scope recall >= ``R`` on
        the fit data. ``oos_weight=w``: maximise ``accuracy + w * recall`` (default 0.25).
        The choice becomes the router's objective (saved with it). Uses the out-of-fold scores
        of the last :meth:`fit` in this process, so it takes milliseconds.
        """
        if self._oof is None:
            raise NotFittedError("recalibrate needs fit() in this process first")
        weight, floor = self._objective(oos_weight, min_oos_recall)
        pred, best, gold, names = self._oof
        if floor is not None and not (gold < 0).any():
            raise InvalidRequestError(
                f"min_oos_recall={floor} needs out-of-scope examples in the fit data, and the "
                f"last fit had none; fit with some (label None) or use oos_weight"
            )
        with self._lock:
            self.calibration = calibrate(
                pred, best, gold, names, oos_weight=weight, min_oos_recall=floor
            )
            self.oos_weight, self.min_oos_recall = weight, floor
        return self.calibration

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted state (thresholds, head, fit data) to the folder ``path``."""
        st = self._state()
        head = None if st.head is None else (st.head.weight, st.head.bias)
        state = SavedState(
            encoder=self.encoder.name,
            scoring=self.scoring,
            scorer=self.scorer,
            knn_m=self.knn_m,
            alias=self.alias,
            route_digest=self._fit_digest or st.digest,
            routes=st.names,
            calibration=self.calibration.to_dict(),
            overrides=self.overrides,
            oos_weight=self.oos_weight,
            min_oos_recall=self.min_oos_recall,
            context=vars(self.context),
            fit=self.fit_data,
            head=head,
        )
        return write_state(Path(path), state)

    @classmethod
    def load(
        cls, path: str | Path, registry: Any = None, *, on_stale: str = "refit", **kwargs: Any
    ) -> Router:
        """A router over ``registry`` with the state saved at ``path``.

        ``on_stale`` says what to do when the routes changed since the state was saved:
        ``"refit"`` (re-fit from the stored fit data), ``"error"`` (raise
        :class:`RouterStateError`) or ``"ignore"`` (keep thresholds, drop the fitted head).
        """
        if on_stale not in STALE_POLICIES:
            raise ValueError(f"on_stale {on_stale!r} is not one of {', '.join(STALE_POLICIES)}")
        folder = Path(path)
        saved = read_state(folder)
        kwargs.setdefault("scoring", saved.scoring)
        kwargs.setdefault("alias", saved.alias)
        kwargs.setdefault("oos_weight", saved.oos_weight)
        kwargs.setdefault("min_oos_recall", saved.min_oos_recall)
        kwargs.setdefault("context", ContextConfig(**saved.context))
        router = cls(registry, **kwargs)
        if router.encoder.name != saved.encoder:
            raise RouterStateError(
                f"router state {str(folder)!r} was fitted with encoder {saved.encoder!r}, but "
                f"this router uses {router.encoder.name!r}; load with the same encoder or re-fit"
            )
        router.calibration = Calibration.from_dict(saved.calibration)
        # the thresholds belong to the scorer and neighbour count they were picked for
        if router.scoring == "auto":
            router.scorer = saved.scorer
        if router._choose_m and saved.knn_m:
            router.knn_m = int(saved.knn_m)
        router.overrides = dict(saved.overrides)
        st = router._state()
        if saved.route_digest == st.digest:
            router.fit_data = saved.fit
            if saved.fit is not None:  # neighbours from the stored fit data (cached vectors)
                st = router._compiled = router._attach_fit(st, saved.fit, train_head=False)
            if saved.head is not None:
                st.head = LogisticHead(weight=saved.head[0], bias=saved.head[1])
            router._fit_digest = st.digest
            return router
        msg = (
            f"router state {str(folder)!r} was fitted on routes {saved.route_digest[:19]}... "
            f"({len(saved.routes)} routes) but the registry now serves {st.digest[:19]}... "
            f"({len(st.routes)} routes)"
        )
        if on_stale == "error":
            raise RouterStateError(msg + "; re-fit with 'adapters route fit DATA'")
        if on_stale == "refit" and saved.fit:
            router.fit(saved.fit.texts, saved.fit.labels)
            try:  # saved, so that the next process neither re-fits nor warns again
                router.save(folder)
                done = "re-fitted it from the fit data stored with it and saved it"
            except OSError as exc:
                done = f"re-fitted it from its stored fit data (not saved: {exc.strerror})"
            logger.warning(
                "%s; %s. To fit on requests that cover the new routes, run "
                '\'adapters route fit DATA\' (JSONL lines {"text", "label"})',
                msg,
                done,
            )
        else:
            logger.warning("%s; keeping thresholds, the head is rebuilt from routing examples", msg)
        return router


def _user_turns(request: Any) -> list[str]:
    """The request's user turns (:func:`loraroute.messages.user_turns`), refusals as
    :class:`InvalidRequestError`."""
    try:
        return user_turns(request)
    except InvalidMessagesError as exc:
        raise InvalidRequestError(str(exc)) from exc
