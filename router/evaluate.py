"""Evaluate a router on labelled data: accuracy, abstention precision/recall, per-route table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .router import Router


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    s = np.concatenate([pos, neg])
    ranks = s.argsort().argsort() + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def evaluate(
    router: Router, texts: list[str], labels: list[str | None], plot: str | Path | None = None
) -> dict:
    """Route every text (one batch) and compare with ``labels`` (``None`` = should abstain)."""
    decisions = router.route_batch(texts)
    pred = [d.adapter for d in decisions]
    score = np.array([d.score for d in decisions])
    gold_in = np.array([g is not None for g in labels])
    abst = np.array([p is None for p in pred])
    ok = np.array([p == g for p, g in zip(pred, labels, strict=True)])
    per: dict[str, dict] = {}
    for name in sorted({g for g in labels if g is not None} | {p for p in pred if p is not None}):
        gm = np.array([g == name for g in labels])
        pm = np.array([p == name for p in pred])
        per[name] = {
            "support": int(gm.sum()),
            "accuracy": float(ok[gm].mean()) if gm.any() else None,
            "precision": float((pm & gm).sum() / pm.sum()) if pm.any() else None,
            "abstained": int((abst & gm).sum()),
        }
    report: dict[str, Any] = {
        "n": len(texts),
        "accuracy": float(ok.mean()) if len(ok) else None,
        "in_scope_accuracy": float(ok[gold_in].mean()) if gold_in.any() else None,
        "abstention_recall": float((abst & ~gold_in).sum() / (~gold_in).sum())
        if (~gold_in).any()
        else None,
        "abstention_precision": float((abst & ~gold_in).sum() / abst.sum()) if abst.any() else None,
        "auroc": auroc(score[gold_in], score[~gold_in]),
        "per_route": per,
        "confusions": Counter(
            f"{g} -> {p}" for g, p in zip(labels, pred, strict=True) if g != p
        ).most_common(10),
    }
    if plot is not None:
        _plot(Path(plot), labels, pred, score, gold_in)
        report["plot"] = str(plot)
    return report


def _plot(path: Path, labels, pred, score, gold_in) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'loraroute[dev]'") from exc
    names = sorted({g for g in labels if g is not None} | {p for p in pred if p is not None})
    axis = names + ["(base)"]
    idx = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(axis), len(axis)), int)
    for g, p in zip(labels, pred, strict=True):
        cm[
            idx.get(g, len(names)) if g else len(names), idx.get(p, len(names)) if p else len(names)
        ] += 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    a1.imshow(cm, cmap="Blues")
    if len(axis) <= 20:
        a1.set_xticks(range(len(axis)), axis, rotation=90)
        a1.set_yticks(range(len(axis)), axis)
        for i in range(len(axis)):
            for j in range(len(axis)):
                if cm[i, j]:
                    a1.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    a1.set_xlabel("routed to")
    a1.set_ylabel("label")
    a1.set_title("confusion matrix")
    a2.hist(score[gold_in], bins=40, alpha=0.6, label="in scope")
    a2.hist(score[~gold_in], bins=40, alpha=0.6, label="out of scope")
    a2.set_xlabel("route score")
    a2.set_title("score: in scope vs out of scope")
    a2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
