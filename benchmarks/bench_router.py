"""Router benchmark on CLINC150: loraroute's router and semantic-router 1.1.1, one run.

Protocol (issue "Router: accurate domain routing..."): each of the 150 intents is a route with
K routing examples taken from ``train`` (the first K of each intent, K=10 and K=50);
thresholds (and the head) are fitted on ``val`` + ``oos_val``; everything is measured on
``test`` + ``oos_test`` (4,500 in scope, 1,000 out of scope). In-scope accuracy counts an
abstention on an in-scope request as wrong. Both routers use the packaged all-MiniLM-L6-v2 on
CPU and the same examples; the peer is ``IndexedRouter(top_k=5, aggregation="mean")`` with its
threshold picked on val by the same objective as ours (accuracy + 0.25 * OOS recall).

    .venv/bin/python benchmarks/bench_router.py            # writes benchmarks/results/router.*
    .venv/bin/python benchmarks/bench_router.py --quick    # K=10 only, fewer timings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
RESULTS = ROOT / "benchmarks" / "results"
OOS_WEIGHT = 0.25


def load(k: int):
    d = json.loads(DATA.read_text())
    routes: dict[str, list[str]] = {}
    for text, intent in d["train"]:
        if len(routes.setdefault(intent, [])) < k:
            routes[intent].append(text)
    val = [(t, i) for t, i in d["val"]] + [(t, None) for t, _ in d["oos_val"]]
    test = [(t, i) for t, i in d["test"]] + [(t, None) for t, _ in d["oos_test"]]
    return routes, val, test


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    s = np.concatenate([pos, neg])
    ranks = s.argsort().argsort() + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def metrics(pred: list[str | None], score: np.ndarray, gold: list[str | None]) -> dict:
    g = np.array([x is not None for x in gold])
    p_none = np.array([x is None for x in pred])
    ok = np.array([a == b for a, b in zip(pred, gold, strict=True)])
    oos_hit = (p_none & ~g).sum()
    return {
        "in_scope_accuracy": float(ok[g].mean()),
        "oos_recall": float(oos_hit / (~g).sum()),
        "oos_precision": float(oos_hit / max(1, p_none.sum())),
        "auroc": auroc(score[g], score[~g]),
    }


def pick_threshold(pred, score, gold) -> float:
    from loraroute.router.calibration import best_threshold

    names = sorted({x for x in gold if x is not None} | {x for x in pred if x is not None})
    pos = {n: i for i, n in enumerate(names)}
    return best_threshold(
        np.array([pos.get(x, -2) for x in pred]),
        np.asarray(score),
        np.array([pos[x] if x is not None else -1 for x in gold]),
        OOS_WEIGHT,
    )


def timings(route_one, route_many, texts: list[str], n_single: int, n_batch: int) -> dict:
    lat = []
    for t in texts[:n_single]:
        t0 = time.perf_counter()
        route_one(t)
        lat.append((time.perf_counter() - t0) * 1000)
    batch = texts[n_single : n_single + n_batch]
    t0 = time.perf_counter()
    route_many(batch)
    dt = time.perf_counter() - t0
    lat.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(0.99 * (len(lat) - 1))],
        "batch_requests_per_s": len(batch) / dt,
        "batch_size": len(batch),
    }


def bench_ours(k, routes, val, test, scoring, timed, n_single, n_batch):
    from loraroute.router import Router

    router = Router.from_examples(routes, scoring=scoring, oos_weight=OOS_WEIGHT)
    t0 = time.perf_counter()
    router.fit([t for t, _ in val], [i for _, i in val])
    fit_s = time.perf_counter() - t0
    decisions = router.route_batch([t for t, _ in test])
    res = metrics(
        [d.adapter for d in decisions], np.array([d.score for d in decisions]), [i for _, i in test]
    )
    res.update(
        fit_seconds=fit_s,
        threshold=router.calibration.threshold,
        route_thresholds=len(router.calibration.route_thresholds),
    )
    if timed:  # the same fit at other accuracy / abstention trade-offs, all picked on val
        res["operating_points"] = {}
        for w in (0.1, 0.25, 0.5, 1.0):
            router.recalibrate(w)
            ds = router.route_batch([t for t, _ in test])
            res["operating_points"][str(w)] = metrics(
                [d.adapter for d in ds], np.array([d.score for d in ds]), [i for _, i in test]
            )
        router.recalibrate(OOS_WEIGHT)
        router.encoder.cache.clear()  # time real encoding, not cache hits
        texts = [t for t, _ in test][::-1]
        res.update(timings(router.route, router.route_batch, texts, n_single, n_batch))
    return res


def bench_peer(k, routes, val, test, timed, n_single, n_batch):
    from semantic_router import Route
    from semantic_router.encoders.local import LocalEncoder
    from semantic_router.routers import IndexedRouter
    from semantic_router.routers.base import run

    from loraroute.models import resolve_embedder

    enc = LocalEncoder(name=str(resolve_embedder("all-minilm-l6-v2").path), device="cpu")
    router = IndexedRouter(
        enc, [Route(name=n, utterances=u) for n, u in routes.items()], top_k=5, aggregation="mean"
    )

    def score(texts):
        out = run(router._scores_many(texts))
        best = [max(s, key=s.__getitem__) if s else None for s in out]
        return best, np.array([s[b] if b else 0.0 for s, b in zip(out, best, strict=True)])

    vb, vs = score([t for t, _ in val])
    thr = pick_threshold(vb, vs, [i for _, i in val])
    router.confidence_threshold = thr
    tb, ts = score([t for t, _ in test])
    pred = [b if s >= thr else None for b, s in zip(tb, ts, strict=True)]
    res = metrics(pred, ts, [i for _, i in test])
    res["threshold"] = thr
    if timed:
        texts = [t for t, _ in test][::-1]
        res.update(timings(router, lambda b: run(router._scores_many(b)), texts, n_single, n_batch))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--scorings", default="hybrid,head,centroid,knn")
    ap.add_argument(
        "--render", action="store_true", help="Only re-write router.md from router.json."
    )
    args = ap.parse_args()
    if args.render:
        (RESULTS / "router.md").write_text(
            render(json.loads((RESULTS / "router.json").read_text()))
        )
        return
    import torch

    ks = [10] if args.quick else [10, 50]
    n_single, n_batch = (50, 500) if args.quick else (200, 2000)
    out: dict = {
        "protocol": "CLINC150; K train examples per intent as routes; thresholds/head fitted "
        "on val+oos_val; measured on test+oos_test (4500 in-scope, 1000 oos)",
        "encoder": "all-MiniLM-L6-v2 (packaged), CPU",
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()[0],
        },
        "results": {},
    }
    for k in ks:
        routes, val, test = load(k)
        rk: dict = {}
        for scoring in args.scorings.split(","):
            rk[f"loraroute[{scoring}]"] = bench_ours(
                k, routes, val, test, scoring, scoring == "hybrid", n_single, n_batch
            )
            print(k, scoring, json.dumps(rk[f"loraroute[{scoring}]"]), flush=True)
        if not args.no_peer:
            rk["semantic-router 1.1.1"] = bench_peer(k, routes, val, test, True, n_single, n_batch)
            print(k, "peer", json.dumps(rk["semantic-router 1.1.1"]), flush=True)
        out["results"][f"K={k}"] = rk
    out["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"router{suffix}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"router{suffix}.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    lines = [
        "# Router benchmark (CLINC150)",
        "",
        out["protocol"] + ".",
        "",
        f"Encoder: {out['encoder']}; machine: {out['machine']}.",
        "",
        "| K | router | in-scope acc | OOS recall | OOS precision | AUROC | p50 ms | p99 ms | batch req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, rk in out["results"].items():
        for name, r in rk.items():
            t = (
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batch_requests_per_s']:.0f}"
                if "p50_ms" in r
                else "- | - | -"
            )
            lines.append(
                f"| {k[2:]} | {name} | {100 * r['in_scope_accuracy']:.1f}% | "
                f"{100 * r['oos_recall']:.1f}% | {100 * r['oos_precision']:.1f}% | "
                f"{r['auroc']:.3f} | {t} |"
            )
    for k, rk in out["results"].items():
        ops = rk.get("loraroute[hybrid]", {}).get("operating_points")
        if ops:
            lines += [
                "",
                f"Operating points of loraroute[hybrid] at K={k[2:]}: one fit, thresholds picked "
                "on val for each weight w of OOS recall against in-scope accuracy (the default "
                "w=0.25 was chosen before measuring):",
                "",
                "| w | in-scope acc | OOS recall | OOS precision |",
                "| --- | --- | --- | --- |",
            ]
            lines += [
                f"| {w} | {100 * m['in_scope_accuracy']:.1f}% | {100 * m['oos_recall']:.1f}% | "
                f"{100 * m['oos_precision']:.1f}% |"
                for w, m in ops.items()
            ]
    lines += [
        "",
        "The peer is semantic-router 1.1.1 `IndexedRouter(top_k=5, aggregation='mean')` with "
        "the same MiniLM folder (its `LocalEncoder`) and the same examples; its threshold is "
        "picked on val with the same objective as ours (in-scope accuracy + 0.25 x OOS recall), "
        "which gives it more OOS recall than the issue's figures (65.6% / 10.5% at K=10). Its "
        "batch figure is its `_scores_many` (one embedding call, then a per-query index "
        "lookup).",
        "",
        "Goals: K=10 >= 80% acc with >= 40% OOS recall; K=50 >= 93% with >= 55%; "
        "batch >= 300 req/s on 2 cores. Default scorer: `hybrid` (see router/scoring.py).",
        "The machine's 2 cores were shared with other jobs during the run (load average "
        "above); latency and throughput are lower bounds.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
