"""The drift report as a PNG: traffic share, score distributions, distances, verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_drift(windows: Any, path: str | Path) -> Path:
    """Write ``windows`` (a :class:`~loraroute.router.drift.Windows`) as a 2x2 PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("drift plots need matplotlib: pip install matplotlib") from exc
    report, ref, cur = windows.report, windows.reference, windows.recent
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = list(report.share)
    x = np.arange(len(names))
    ax = axes[0, 0]
    ax.bar(x - 0.2, [report.share[n]["reference"] for n in names], 0.4, label="reference")
    ax.bar(x + 0.2, [report.share[n]["recent"] for n in names], 0.4, label="recent")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("share of requests")
    ax.set_title(f"traffic share (largest adapter change {100 * report.share_change:.1f} pts)")
    ax.legend()
    ax = axes[0, 1]
    both = np.concatenate([ref.scores, cur.scores]) if len(ref) + len(cur) else np.zeros(1)
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 30)
    ax.hist(ref.scores, bins=bins, density=True, alpha=0.5, label="reference")
    ax.hist(cur.scores, bins=bins, density=True, alpha=0.5, label="recent")
    s = report.score
    fmt = "-" if s["psi"] is None else f"{s['psi']:.3f}"
    kst = "-" if s["ks_statistic"] is None else f"{s['ks_statistic']:.3f}"
    ax.set_title(f"router score: PSI {fmt}, KS {kst}")
    ax.set_xlabel("score")
    ax.legend()
    ax = axes[1, 0]
    dists = [w.distances for w in (ref, cur)]
    if all(d is not None and len(d) for d in dists):
        hi = max(float(d.max()) for d in dists) + 1e-9  # type: ignore[union-attr]
        dbins = np.linspace(0.0, hi, 30)
        ax.hist(dists[0], bins=dbins, density=True, alpha=0.5, label="reference")
        ax.hist(dists[1], bins=dbins, density=True, alpha=0.5, label="recent")
        ax.legend()
    d = report.distance
    ax.set_title(
        "distance to nearest routing example"
        + ("" if d["change"] is None else f" (mean {d['reference']:.3f} -> {d['recent']:.3f})")
    )
    ax.set_xlabel("1 - cosine similarity")
    ax = axes[1, 1]
    ax.axis("off")
    fb = report.fallback_rate
    lines = [
        f"reference: {report.reference_kind}, {report.reference_n} decisions",
        f"recent: {report.recent_n} decisions",
        f"fallback rate {100 * fb['reference']:.1f}% -> {100 * fb['recent']:.1f}%",
        "",
        "DRIFT" if report.drifted else ("no drift" if report.enough_data else "too few decisions"),
        *report.alarms,
    ]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9, wrap=True)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
