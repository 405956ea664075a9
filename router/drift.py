"""Drift of routed traffic: does a recent window of routing decisions look like a reference?

Figures (each has a threshold in :class:`Thresholds`; a figure past it is an alarm):

- **traffic share** per adapter (``base``: the fallback), and its largest change;
- **fallback rate** (share of requests the base model answered) and its change;
- **score shift** of the router's score for the decision: the population stability index over
  ten reference-quantile bins (PSI; 0.1 is usually read as moderate, 0.25 as major) and the
  two-sample Kolmogorov-Smirnov test (an alarm needs both the statistic and the p-value past
  their thresholds: with thousands of decisions a tiny, harmless shift is "significant");
- **distance to the nearest routing example** (``1 - cosine similarity``), its mean and change.

The reference is a traffic window (the decisions before the recent ones, or a time range) or
the routing examples themselves (:func:`example_reference`): then the examples' leave-one-out
nearest distances are the distance reference, the fallback rate is compared with 0, and share
and score shift are reported without alarming (examples are neither traffic nor scored like it).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = Window(["legal"] * 500 + ["base"] * 500, rng.normal(0.6, 0.1, 1000))
    >>> cur = Window(["base"] * 400 + ["legal"] * 100, rng.normal(0.4, 0.1, 500))
    >>> report = compare(ref, cur)
    >>> report.drifted, sorted(a.split(":")[0] for a in report.alarms)[:2]
    (True, ['fallback_rate', 'score_ks'])
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

BASE = "base"  # the traffic-share label of the fallback (the base model answered)
DEFAULT_RECENT = 500
DEFAULT_REFERENCE = 5000
PSI_BINS = 10


@dataclass(frozen=True)
class Thresholds:
    """Alarm thresholds; a figure strictly past its threshold raises an alarm.

    ``share``/``fallback``: absolute change of a share (0.10 = ten points); ``psi``: the score
    PSI; ``ks`` and ``ks_pvalue``: the KS statistic above ``ks`` *and* its p-value below
    ``ks_pvalue``; ``distance``: rise of the mean distance to the nearest routing example;
    ``min_samples``: fewer recent (or reference traffic) decisions than this raise no alarm.
    """

    share: float = 0.10
    fallback: float = 0.10
    psi: float = 0.20
    ks: float = 0.10
    ks_pvalue: float = 0.01
    distance: float = 0.05
    min_samples: int = 100

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"threshold {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class Window:
    """Decisions to compare: each one's route (adapter name, or ``base``), its score, and the
    request embeddings (rows; ``None`` when unknown)."""

    routes: Sequence[str]
    scores: np.ndarray
    embeddings: np.ndarray | None = None
    distances: np.ndarray | None = None  # precomputed nearest-example distances, if known

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64))
        if len(self.routes) != len(self.scores):
            raise ValueError(f"{len(self.routes)} routes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.routes)

    @classmethod
    def from_records(cls, records: Sequence[Any], *, encoder: str | None = None) -> Window:
        """From decision-log records (:class:`loraroute.registry.decisions.DecisionRecord`);
        embeddings only of records made by ``encoder`` (any, if None) and of one dimension."""
        vecs = [
            r.embedding
            for r in records
            if r.embedding is not None and (encoder is None or r.encoder in (None, encoder))
        ]
        emb = None
        if vecs:
            dim = Counter(len(v) for v in vecs).most_common(1)[0][0]
            emb = np.stack([v for v in vecs if len(v) == dim]).astype(np.float32)
        return cls([r.route for r in records], np.array([r.score for r in records]), emb)

    @classmethod
    def from_decisions(cls, decisions: Sequence[Any]) -> Window:
        """From :class:`~loraroute.router.RouteDecision` objects."""
        vecs = [d.embedding for d in decisions if d.embedding is not None]
        return cls(
            [d.adapter or BASE for d in decisions],
            np.array([d.score for d in decisions]),
            np.stack(vecs).astype(np.float32) if vecs else None,
        )


@dataclass
class DriftReport:
    """What :func:`compare` found; ``alarms`` names each figure past its threshold."""

    reference_kind: str
    reference_n: int
    recent_n: int
    share: dict[str, dict[str, float]]
    share_change: float
    fallback_rate: dict[str, float]
    score: dict[str, float | None]
    distance: dict[str, float | None]
    thresholds: Thresholds
    enough_data: bool
    alarms: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.alarms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drifted"] = self.drifted
        return d


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``recent`` against ``reference`` over ``bins``
    reference-quantile bins: ``sum((q - p) * ln(q / p))`` (empty bins count as 0.5 items)."""
    ref, cur = np.asarray(reference, np.float64), np.asarray(recent, np.float64)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    n_ref = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    n_cur = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    p = np.maximum(n_ref, 0.5) / len(ref)
    q = np.maximum(n_cur, 0.5) / len(cur)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov ``(statistic, p-value)`` (scipy's ``ks_2samp``)."""
    if len(reference) == 0 or len(recent) == 0:
        return float("nan"), float("nan")
    from scipy.stats import ks_2samp

    res = ks_2samp(reference, recent)
    return float(res.statistic), float(res.pvalue)


def nearest_distance(embeddings: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """``1 - max cosine similarity`` of each embedding to the examples (unit vectors)."""
    if embeddings is None or len(embeddings) == 0 or examples is None or len(examples) == 0:
        return np.zeros(0, np.float64)
    if embeddings.shape[1] != examples.shape[1]:
        raise ValueError(
            f"request embeddings have {embeddings.shape[1]} dimensions but the routing "
            f"examples {examples.shape[1]}: they come from different encoders"
        )
    best = np.full(len(embeddings), -1.0)
    for i in range(0, len(embeddings), 2048):  # bounded memory for big windows
        sims = embeddings[i : i + 2048].astype(np.float32) @ examples.T.astype(np.float32)
        best[i : i + 2048] = sims.max(axis=1)
    return 1.0 - best


def example_reference(examples: np.ndarray, routes: Sequence[str], scores: np.ndarray) -> Window:
    """The routing examples as a reference: their routes, ``scores`` (the router's scores for
    them) and each example's distance to its nearest *other* example."""
    x = np.asarray(examples, np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    dist = 1.0 - sims.max(axis=1) if len(x) > 1 else np.zeros(len(x))
    return Window(list(routes), scores, x, distances=np.asarray(dist, np.float64))


def _shares(routes: Sequence[str]) -> dict[str, float]:
    n = max(len(routes), 1)
    return {k: v / n for k, v in Counter(routes).items()}


def _mean(x: np.ndarray | None) -> float | None:
    return None if x is None or len(x) == 0 else float(np.mean(x))


def compare(
    reference: Window,
    recent: Window,
    *,
    examples: np.ndarray | None = None,
    thresholds: Thresholds | None = None,
    reference_kind: str = "traffic",
) -> DriftReport:
    """Compare ``recent`` with ``reference``; ``examples``: the routing examples' vectors (for
    the distance figures). ``reference_kind="examples"``: see the module docstring."""
    t = thresholds or Thresholds()
    traffic = reference_kind != "examples"
    ref_share, cur_share = _shares(reference.routes), _shares(recent.routes)
    share = {
        k: {
            "reference": ref_share.get(k, 0.0),
            "recent": cur_share.get(k, 0.0),
            "change": cur_share.get(k, 0.0) - ref_share.get(k, 0.0),
        }
        for k in sorted(set(ref_share) | set(cur_share))
    }
    adapters = [k for k in share if k != BASE]
    share_change = max((abs(share[k]["change"]) for k in adapters), default=0.0)
    fb_ref, fb_cur = ref_share.get(BASE, 0.0), cur_share.get(BASE, 0.0)
    fallback = {"reference": fb_ref, "recent": fb_cur, "change": fb_cur - fb_ref}
    p = psi(reference.scores, recent.scores)
    stat, pvalue = ks(reference.scores, recent.scores)
    score = {
        "reference_mean": _mean(reference.scores),
        "recent_mean": _mean(recent.scores),
        "psi": None if math.isnan(p) else p,
        "ks_statistic": None if math.isnan(stat) else stat,
        "ks_pvalue": None if math.isnan(pvalue) else pvalue,
    }
    ref_d = reference.distances
    if ref_d is None and examples is not None and reference.embeddings is not None:
        ref_d = nearest_distance(reference.embeddings, examples)
    cur_d = recent.distances
    if cur_d is None and examples is not None and recent.embeddings is not None:
        cur_d = nearest_distance(recent.embeddings, examples)
    d_ref, d_cur = _mean(ref_d), _mean(cur_d)
    distance = {
        "reference": d_ref,
        "recent": d_cur,
        "change": None if d_ref is None or d_cur is None else d_cur - d_ref,
    }
    # a handful of routing examples is a whole reference; traffic needs min_samples too
    enough = len(recent) >= t.min_samples and len(reference) >= (t.min_samples if traffic else 1)
    report = DriftReport(
        reference_kind,
        len(reference),
        len(recent),
        share,
        share_change,
        fallback,
        score,
        distance,
        t,
        enough,
    )
    if not enough:
        return report
    alarms = report.alarms
    if traffic and share_change > t.share:
        worst = max(adapters, key=lambda k: abs(share[k]["change"]))
        alarms.append(
            f"traffic_share: {worst} {100 * share[worst]['reference']:.1f}% -> "
            f"{100 * share[worst]['recent']:.1f}% (change > {100 * t.share:g} points)"
        )
    if abs(fallback["change"]) > t.fallback:
        alarms.append(
            f"fallback_rate: {100 * fb_ref:.1f}% -> {100 * fb_cur:.1f}% "
            f"(change > {100 * t.fallback:g} points)"
        )
    if traffic and score["psi"] is not None and score["psi"] > t.psi:
        alarms.append(f"score_psi: {score['psi']:.3f} > {t.psi:g}")
    if (
        traffic
        and score["ks_statistic"] is not None
        and score["ks_pvalue"] is not None
        and score["ks_statistic"] > t.ks
        and score["ks_pvalue"] < t.ks_pvalue
    ):
        alarms.append(
            f"score_ks: statistic {score['ks_statistic']:.3f} > {t.ks:g} "
            f"(p={score['ks_pvalue']:.2g} < {t.ks_pvalue:g})"
        )
    change = distance["change"]
    if change is not None and change > t.distance:
        alarms.append(f"example_distance: mean {d_ref:.3f} -> {d_cur:.3f} (rise > {t.distance:g})")
    return report


def example_vectors(router: Any) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The router's routing examples: ``(unit vectors, route of each, router score of each)``."""
    st = router._state()
    routes = [st.routes[int(i)].name for i in st.ex_route]
    if not len(st.ex_vec):
        return np.zeros((0, router.encoder.dim), np.float32), [], np.zeros(0)
    return st.ex_vec, routes, np.asarray(router._scores(st, st.ex_vec).max(axis=1), np.float64)


@dataclass
class Windows:
    """The two windows one report compared, and the report."""

    reference: Window
    recent: Window
    report: DriftReport


def from_log(
    log: Any,
    router: Any = None,
    *,
    recent: int = DEFAULT_RECENT,
    reference: int | str = DEFAULT_REFERENCE,
    since: datetime | None = None,
    until: datetime | None = None,
    reference_since: datetime | None = None,
    reference_until: datetime | None = None,
    thresholds: Thresholds | None = None,
) -> Windows:
    """Compare windows of a :class:`~loraroute.registry.decisions.DecisionLog`.

    Recent: the decisions in ``[since, until)`` when either is given, else the newest
    ``recent``. Reference: ``"examples"`` (the router's routing examples), the decisions in
    ``[reference_since, reference_until)`` when either is given, else the ``reference``
    decisions just before the recent window. ``router`` (its routing examples) is needed for
    the distance figures and the examples reference.
    """
    if since is not None or until is not None:
        cur_rec = log.read(since=since, until=until)
    else:
        cur_rec = log.read(last=recent)
    encoder = None if router is None else router.encoder.name
    cur = Window.from_records(cur_rec, encoder=encoder)
    examples = None
    if router is not None:
        ex_vec, ex_routes, ex_scores = example_vectors(router)
        examples = ex_vec if len(ex_vec) else None
    if reference == "examples":
        if router is None or examples is None:
            raise ValueError("the examples reference needs a router with routing examples")
        ref = example_reference(ex_vec, ex_routes, ex_scores)
        kind = "examples"
    else:
        if isinstance(reference, str):
            raise ValueError(f"reference must be a count or 'examples', got {reference!r}")
        if reference_since is not None or reference_until is not None:
            ref_rec = log.read(since=reference_since, until=reference_until)
        elif since is not None or until is not None:
            start = cur_rec[0].at if cur_rec else since
            ref_rec = log.read(last=reference, until=start)
        else:
            ref_rec = log.read(last=reference, skip=len(cur_rec))
        ref = Window.from_records(ref_rec, encoder=encoder)
        kind = "traffic"
    ref, cur = _with_distances(ref, examples), _with_distances(cur, examples)
    report = compare(ref, cur, thresholds=thresholds, reference_kind=kind)
    return Windows(ref, cur, report)


def _with_distances(w: Window, examples: np.ndarray | None) -> Window:
    if w.distances is not None or examples is None or w.embeddings is None:
        return w
    return replace(w, distances=nearest_distance(w.embeddings, examples))


__all__ = [
    "BASE",
    "DEFAULT_RECENT",
    "DEFAULT_REFERENCE",
    "DriftReport",
    "Thresholds",
    "Window",
    "compare",
    "Windows",
    "example_reference",
    "example_vectors",
    "from_log",
    "ks",
    "nearest_distance",
    "psi",
]
