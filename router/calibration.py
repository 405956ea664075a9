"""Thresholds and confidence from labelled data (``None`` label = out of scope).

Two objectives pick the thresholds on the given (out-of-fold) scores; in both, an abstention
on an in-scope request counts as wrong.

- Weighted (the default): maximise ``in-scope accuracy + oos_weight * out-of-scope recall``.
  The default weight 0.25 favours accuracy: a wrong adapter hurts more than none, but a missing
  one for an in-scope request also costs, and on CLINC150 val this weight keeps accuracy within
  ~1 point of the no-threshold ceiling while catching most out-of-scope requests. It was fixed
  before any test figures were seen and stays the default: it needs no target from the user,
  and it leans towards abstaining, the cheaper mistake.
- Constrained (``min_oos_recall=R``): maximise in-scope accuracy subject to out-of-scope recall
  ``>= R`` on the calibration data, which is how operators usually state a goal ("catch at
  least 60% of off-topic requests, otherwise be as accurate as possible"). The objective is
  separable over routes only in its Lagrangian form, so it is solved through it: the weighted
  objective is fitted for a range of weights ``w`` (the multiplier of the recall constraint,
  the smallest feasible one refined by bisection). A discrete problem has a duality gap (the
  recall of such a solution jumps past ``R``), so each of these calibrations, and a plain
  global threshold, is shifted by the one offset that brings its recall to just ``R``; the
  shifted calibration with the best in-scope accuracy on the calibration data wins. The
  recall is a fit-data figure: with few out-of-scope samples it is a noisy estimate of the
  recall on new traffic, so leave a margin. How much depends on how representative the
  out-of-scope samples are: on CLINC150 (100 out-of-scope val requests), a floor of 0.6 on val
  gave 30-35% on test, while the weighted default kept 45-80% (benchmarks/results/router.md).

Per-route thresholds are fitted where a route has enough fit samples, shrunk towards the global
one. Confidence is a Platt scaling of ``score - threshold`` onto "the decision is right".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: Per-route thresholds are fitted only for routes with this many fit samples predicted to
#: them, and shrunk towards the global threshold with this prior weight.
MIN_ROUTE_SAMPLES = 20
SHRINK = 20.0
DEFAULT_OOS_WEIGHT = 0.25
#: Weights tried for the constrained objective before bisection (0, then log-spaced).
_WEIGHT_GRID = (0.0, *np.geomspace(1e-3, 1e4, 57).tolist())
_BISECT_STEPS = 24


@dataclass
class Calibration:
    threshold: float
    route_thresholds: dict[str, float] = field(default_factory=dict)
    platt_a: float = 10.0  # confidence = sigmoid(a * (score - threshold) + b)
    platt_b: float = 0.0
    #: How the thresholds were picked: ``{"oos_weight": w}`` or ``{"min_oos_recall": R,
    #: "oos_weight": effective multiplier or None}``; empty for default thresholds.
    objective: dict = field(default_factory=dict)
    #: In-scope accuracy and out-of-scope recall on the calibration data at these thresholds.
    fit_in_scope_accuracy: float | None = None
    fit_oos_recall: float | None = None

    def threshold_for(self, route: str) -> float:
        return self.route_thresholds.get(route, self.threshold)

    def confidence(self, score: float, threshold: float, routed: bool) -> float:
        z = self.platt_a * (score - threshold) + self.platt_b
        p = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
        return p if routed else 1.0 - p

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "route_thresholds": self.route_thresholds,
            "platt_a": self.platt_a,
            "platt_b": self.platt_b,
            "objective": self.objective,
            "fit_in_scope_accuracy": self.fit_in_scope_accuracy,
            "fit_oos_recall": self.fit_oos_recall,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        def opt(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        return cls(
            float(d["threshold"]),
            {k: float(v) for k, v in d["route_thresholds"].items()},
            float(d["platt_a"]),
            float(d["platt_b"]),
            dict(d.get("objective") or {}),
            opt("fit_in_scope_accuracy"),
            opt("fit_oos_recall"),
        )


def check_objective(oos_weight: float, min_oos_recall: float | None) -> None:
    """Raise ``ValueError`` for an objective that cannot be optimised."""
    if not (isinstance(oos_weight, (int, float)) and math.isfinite(oos_weight) and oos_weight >= 0):
        raise ValueError(f"oos_weight must be a finite number >= 0, got {oos_weight!r}")
    if min_oos_recall is not None and not (
        isinstance(min_oos_recall, (int, float)) and 0.0 <= min_oos_recall <= 1.0
    ):
        raise ValueError(
            f"min_oos_recall must be a fraction in [0, 1] (0.6 = catch 60% of out-of-scope "
            f"requests), got {min_oos_recall!r}"
        )


def _candidates(score: np.ndarray) -> np.ndarray:
    s = np.unique(score)
    cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    if len(cands) > 2000:
        cands = np.quantile(score, np.linspace(0, 1, 2000))
    return cands


def _curves(
    pred: np.ndarray, score: np.ndarray, gold: np.ndarray, cands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """In-scope accuracy and out-of-scope recall at each candidate threshold (vectorised)."""
    ins = gold >= 0
    good = np.sort(score[ins & (pred == gold)])
    oos = np.sort(score[~ins])
    n_ins, n_oos = int(ins.sum()), int((~ins).sum())
    acc = (len(good) - np.searchsorted(good, cands, "left")) / n_ins if n_ins else 0 * cands
    rec = np.searchsorted(oos, cands, "left") / n_oos if n_oos else 0 * cands
    return acc, rec


def best_threshold(pred: np.ndarray, score: np.ndarray, gold: np.ndarray, w: float) -> float:
    """The threshold maximising ``accuracy + w * recall``; candidates are midpoints of scores."""
    if (gold < 0).sum() == 0:
        # No out-of-scope data: abstain only below the 2nd percentile of correct scores.
        ok = score[(gold >= 0) & (pred == gold)]
        return float(np.quantile(ok, 0.02)) if len(ok) else float(score.min(initial=0.0))
    cands = _candidates(score)
    acc, rec = _curves(pred, score, gold, cands)
    return float(cands[int(np.argmax(acc + w * rec))])


def _sample_thresholds(cal: Calibration, pred: np.ndarray, names: list[str]) -> np.ndarray:
    """The threshold that applies to each sample (its predicted route's, else the global)."""
    per_route = np.array([cal.threshold_for(n) for n in names] + [cal.threshold], np.float64)
    idx = np.where((pred >= 0) & (pred < len(names)), pred, len(names))
    return per_route[idx]


def rates(
    pred: np.ndarray, score: np.ndarray, gold: np.ndarray, names: list[str], cal: Calibration
) -> tuple[float, float]:
    """``(in-scope accuracy, out-of-scope recall)`` of ``cal`` on the given scores."""
    thr = _sample_thresholds(cal, pred, names)
    routed = score >= thr
    ins = gold >= 0
    acc = float(np.mean(routed[ins] & (pred[ins] == gold[ins]))) if ins.any() else 0.0
    rec = float(np.mean(~routed[~ins])) if (~ins).any() else 0.0
    return acc, rec


def _weighted(
    pred: np.ndarray, score: np.ndarray, gold: np.ndarray, names: list[str], w: float
) -> Calibration:
    t = best_threshold(pred, score, gold, w)
    per: dict[str, float] = {}
    for r, name in enumerate(names):
        mask = pred == r
        n = int(mask.sum())
        wrong = int((gold[mask] != r).sum())
        if n >= MIN_ROUTE_SAMPLES and wrong >= 3:
            tr = best_threshold(pred[mask], score[mask], gold[mask], w)
            per[name] = float((n * tr + SHRINK * t) / (n + SHRINK))
    return Calibration(t, per)


def _constrained(
    pred: np.ndarray, score: np.ndarray, gold: np.ndarray, names: list[str], r: float
) -> Calibration:
    """Best in-scope accuracy with out-of-scope recall >= ``r`` (see the module docstring)."""
    tried: dict[float, tuple[Calibration, float, float]] = {}

    def at(w: float) -> bool:
        if w not in tried:
            cal = _weighted(pred, score, gold, names, w)
            tried[w] = (cal, *rates(pred, score, gold, names, cal))
        return tried[w][2] >= r - 1e-12

    feasible = [w for w in _WEIGHT_GRID if at(w)]
    if feasible and feasible[0] > 0.0:  # the smallest feasible multiplier, by bisection
        hi = feasible[0]
        lo = max(w for w in _WEIGHT_GRID if w < hi)
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2 if lo == 0.0 else math.sqrt(lo * hi)
            lo, hi = (lo, mid) if at(mid) else (mid, hi)
    # A discrete problem has a duality gap: the recall of a Lagrangian solution jumps past r
    # or stays short. So every solution (and a plain global threshold) is shifted by the one
    # offset that brings its recall to just r, and the shifted one with the best accuracy wins.
    options = []
    for w, (cal, _, _) in [(None, (Calibration(0.0), 0.0, 0.0)), *tried.items()]:
        shifted, offset = _shift_to_floor(cal, pred, score, gold, names, r)
        acc, rec = rates(pred, score, gold, names, shifted)
        options.append((acc, rec, -abs(offset), shifted, w, offset))
    # Best accuracy; then higher recall; then the smallest shift.
    *_, best, w_best, offset = max(options, key=lambda o: o[:3])
    best.objective = {"min_oos_recall": r, "oos_weight": w_best, "offset": offset}
    return best


def _shift_to_floor(
    cal: Calibration,
    pred: np.ndarray,
    score: np.ndarray,
    gold: np.ndarray,
    names: list[str],
    r: float,
) -> tuple[Calibration, float]:
    """``cal`` with every threshold moved by the offset that makes its recall just ``r``."""
    thr = _sample_thresholds(cal, pred, names)
    margin = score - thr  # routed iff margin >= offset
    oos = np.sort(margin[gold < 0])
    k = math.ceil(r * len(oos) - 1e-9)  # out-of-scope samples that must abstain
    if k == 0:
        offset = float(margin.min()) - 1e-6
    else:
        above = margin[margin > oos[k - 1]]
        offset = float((oos[k - 1] + above.min()) / 2 if len(above) else oos[k - 1] + 1e-6)
    moved = {name: t + offset for name, t in cal.route_thresholds.items()}
    return Calibration(cal.threshold + offset, moved), offset


def calibrate(
    pred: np.ndarray,
    score: np.ndarray,
    gold: np.ndarray,
    names: list[str],
    *,
    oos_weight: float = DEFAULT_OOS_WEIGHT,
    min_oos_recall: float | None = None,
) -> Calibration:
    """Fit global + per-route thresholds and Platt confidence; ``gold`` -1 = out of scope.

    With ``min_oos_recall`` the constrained objective is used (``oos_weight`` is then ignored);
    it needs out-of-scope samples (``ValueError`` otherwise).
    """
    check_objective(oos_weight, min_oos_recall)
    if min_oos_recall is not None:
        if not (gold < 0).any():
            raise ValueError(
                "min_oos_recall needs out-of-scope samples (label None) in the calibration data"
            )
        cal = _constrained(pred, score, gold, names, float(min_oos_recall))
    else:
        cal = _weighted(pred, score, gold, names, float(oos_weight))
        cal.objective = {"oos_weight": float(oos_weight)}
    cal.fit_in_scope_accuracy, cal.fit_oos_recall = rates(pred, score, gold, names, cal)
    thr = _sample_thresholds(cal, pred, names)
    cal.platt_a, cal.platt_b = _platt(score - thr, (pred == gold).astype(np.float64))
    logger.info(
        "calibrated (%s): threshold %.4f, %d route thresholds; on fit data in-scope accuracy "
        "%.3f, out-of-scope recall %.3f",
        cal.objective,
        cal.threshold,
        len(cal.route_thresholds),
        cal.fit_in_scope_accuracy,
        cal.fit_oos_recall,
    )
    return cal


def _platt(x: np.ndarray, y: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Logistic regression of y on x by Newton's method (two parameters)."""
    if y.min() == y.max():
        return 10.0, 0.0
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(a * x + b, -50.0, 50.0)))  # no overflow warning far out
        g = np.array([np.sum((p - y) * x), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        h += 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)
