"""Thresholds and confidence from labelled data (``None`` label = out of scope).

Thresholds maximise ``in-scope accuracy + oos_weight * out-of-scope recall`` on the given
(out-of-fold) scores, where an abstention on an in-scope request counts as wrong. The default
weight 0.25 favours accuracy: a wrong adapter hurts more than none, but a missing one for an
in-scope request also costs, and on CLINC150 val this weight keeps accuracy within ~1 point of
the no-threshold ceiling while catching most out-of-scope requests.

Confidence is a Platt scaling of ``score - threshold`` onto "the decision is right".
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


@dataclass
class Calibration:
    threshold: float
    route_thresholds: dict[str, float] = field(default_factory=dict)
    platt_a: float = 10.0  # confidence = sigmoid(a * (score - threshold) + b)
    platt_b: float = 0.0

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
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(
            float(d["threshold"]),
            {k: float(v) for k, v in d["route_thresholds"].items()},
            float(d["platt_a"]),
            float(d["platt_b"]),
        )


def _objective(pred: np.ndarray, score: np.ndarray, gold: np.ndarray, t: float, w: float) -> float:
    routed = score >= t
    ins = gold >= 0
    acc = float(np.mean(routed[ins] & (pred[ins] == gold[ins]))) if ins.any() else 0.0
    rec = float(np.mean(~routed[~ins])) if (~ins).any() else 0.0
    return acc + w * rec


def best_threshold(pred: np.ndarray, score: np.ndarray, gold: np.ndarray, w: float) -> float:
    """The threshold maximising the objective; candidates are midpoints between scores."""
    if (gold < 0).sum() == 0:
        # No out-of-scope data: abstain only below the 2nd percentile of correct scores.
        ok = score[(gold >= 0) & (pred == gold)]
        return float(np.quantile(ok, 0.02)) if len(ok) else float(score.min(initial=0.0))
    s = np.unique(score)
    cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    if len(cands) > 2000:
        cands = np.quantile(score, np.linspace(0, 1, 2000))
    vals = [_objective(pred, score, gold, t, w) for t in cands]
    return float(cands[int(np.argmax(vals))])


def calibrate(
    pred: np.ndarray, score: np.ndarray, gold: np.ndarray, names: list[str], *, oos_weight: float
) -> Calibration:
    """Fit global + per-route thresholds and Platt confidence; ``gold`` -1 = out of scope."""
    t = best_threshold(pred, score, gold, oos_weight)
    per: dict[str, float] = {}
    for r, name in enumerate(names):
        mask = pred == r
        n = int(mask.sum())
        wrong = int((gold[mask] != r).sum())
        if n >= MIN_ROUTE_SAMPLES and wrong >= 3:
            tr = best_threshold(pred[mask], score[mask], gold[mask], oos_weight)
            per[name] = float((n * tr + SHRINK * t) / (n + SHRINK))
    thr = np.array([per.get(names[p], t) if p >= 0 else t for p in pred])
    correct = np.where(score >= thr, pred == gold, gold < 0).astype(np.float64)
    a, b = _platt(score - thr, (pred == gold).astype(np.float64))
    logger.info(
        "calibrated: threshold %.4f, %d route thresholds, accuracy on fit data %.3f",
        t,
        len(per),
        correct.mean(),
    )
    return Calibration(t, per, a, b)


def _platt(x: np.ndarray, y: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Logistic regression of y on x by Newton's method (two parameters)."""
    if y.min() == y.max():
        return 10.0, 0.0
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([np.sum((p - y) * x), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        h += 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)
