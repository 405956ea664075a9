"""Router benchmark on CLINC150: loraroute's router and semantic-router 1.1.1, one run.

Two protocols, both calibrated on ``val`` + ``oos_val`` and measured on ``test`` + ``oos_test``
(4,500 in scope, 1,000 out of scope); an abstention on an in-scope request counts as wrong:

- ``domains`` (the issue's protocol): each of the 10 domains of ``domains.json`` is one adapter;
  K routing examples per domain drawn from ``train`` with one ``random.Random(0)``, ``.sample``
  per domain, domains in sorted order; K = 10 and 50.
- ``intents`` (harder; the first protocol we ran): each of the 150 intents is a route with the
  first K ``train`` texts of that intent as examples.

Both routers use the packaged all-MiniLM-L6-v2 on CPU and the same examples; the peer is
``IndexedRouter(top_k=5, aggregation="mean")``. Operating points, all picked on val:

- default: thresholds maximise in-scope accuracy + 0.25 x OOS recall (the peer's one threshold
  by the same objective);
- ``min_oos_recall=0.6``: the best in-scope accuracy with OOS recall >= 0.6 on val (the peer's
  one threshold by the same rule). 0.6 was fixed from the issue's goals before this run: the
  strictest goal floor is 55% OOS recall; the val estimate rests on 100 OOS requests (standard
  error ~5 points), so the floor asked for on val is one standard error above it.

Single-request latency of ours and the peer's is measured interleaved (request by request,
alternating which goes first), so both see the same load on a shared machine.

semantic-router 1.1.1 pins versions (openai) that conflict with the dev environment; install
it (the ``bench`` extra) apart and put it on PYTHONPATH, e.g.::

    .venv/bin/pip install --target /tmp/sr-deps --no-deps semantic-router==1.1.1 ...
    PYTHONPATH=/tmp/sr-deps nice .venv/bin/python benchmarks/bench_router.py
    PYTHONPATH=/tmp/sr-deps nice .venv/bin/python benchmarks/bench_router.py --protocols domains
        # the issue's protocol only (~10 min); the intents section is kept from router.json
    .venv/bin/python benchmarks/bench_router.py --quick    # K=10 only, fewer timings
    .venv/bin/python benchmarks/bench_router.py --render   # re-write router.md from .json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from loraroute.router.scoring import DEFAULT_SCORING  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
DOMAINS = ROOT.parent / "shared" / "data" / "clinc150" / "domains.json"
RESULTS = ROOT / "benchmarks" / "results"
OOS_WEIGHT = 0.25
#: Fixed from the issue's goals before the run (see the module docstring).
MIN_OOS_RECALL = 0.6
W_GRID = (0.1, 0.25, 0.5, 1.0)
R_GRID = (0.4, 0.5, 0.55, 0.6, 0.7, 0.8)
PEER = "semantic-router 1.1.1"
GOALS = {10: (0.80, 0.40), 50: (0.93, 0.55)}
OURS = f"loraroute[{DEFAULT_SCORING}]"
N_IN_SCOPE, N_OOS = 4500, 1000  # CLINC150 test and oos_test
#: The torch thread count throughput() runs at (None: torch's default), for the peer's threads.
BENCH_THREADS: dict[str, int | None] = {"n": None}


def load(k: int, protocol: str):
    d = json.loads(DATA.read_text())
    if protocol == "intents":
        label = {i: i for _, i in d["train"]}
        routes: dict[str, list[str]] = {}
        for text, intent in d["train"]:
            if len(routes.setdefault(intent, [])) < k:
                routes[intent].append(text)
    else:
        label = {
            i: dom for dom, intents in json.loads(DOMAINS.read_text()).items() for i in intents
        }
        pool: dict[str, list[str]] = {}
        for text, intent in d["train"]:
            pool.setdefault(label[intent], []).append(text)
        rng = random.Random(0)
        routes = {dom: rng.sample(pool[dom], k) for dom in sorted(pool)}
    val = [(t, label[i]) for t, i in d["val"]] + [(t, None) for t, _ in d["oos_val"]]
    test = [(t, label[i]) for t, i in d["test"]] + [(t, None) for t, _ in d["oos_test"]]
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


def pick_threshold(pred, score, gold, min_oos_recall: float | None = None) -> float:
    """The peer's one global threshold, picked on val with our objective (no route thresholds)."""
    from loraroute.router.calibration import calibrate

    names = sorted({x for x in gold if x is not None} | {x for x in pred if x is not None})
    pos = {n: i for i, n in enumerate(names)}
    return calibrate(
        np.array([pos.get(x, -2) if x is not None else -2 for x in pred]),
        np.asarray(score, np.float64),
        np.array([pos[x] if x is not None else -1 for x in gold]),
        [],  # no route names: one global threshold
        oos_weight=OOS_WEIGHT,
        min_oos_recall=min_oos_recall,
    ).threshold


def decide(router, names: list[str], scores: np.ndarray) -> list[str | None]:
    """Single-turn decisions from a score matrix (what route_batch does for one-turn requests)."""
    best = scores.argmax(axis=1)
    thr = np.array([router.threshold_for(n) for n in names])[best]
    top = scores.max(axis=1)
    return [names[b] if s >= t else None for b, s, t in zip(best, top, thr, strict=True)]


def bench_ours(routes, val, test, scoring, full):
    """``(default-objective result, min_oos_recall result or None, router)``."""
    from loraroute.router import Router

    # "knn3": knn with its neighbour count fixed at 3 instead of chosen by fit
    kw = {"scoring": "knn", "knn_m": 3} if scoring == "knn3" else {"scoring": scoring}
    router = Router.from_examples(routes, oos_weight=OOS_WEIGHT, **kw)
    texts, gold = [t for t, _ in test], [i for _, i in test]
    t0 = time.perf_counter()
    router.fit([t for t, _ in val], [i for _, i in val])
    fit_s = time.perf_counter() - t0

    def run_real() -> dict:  # the product path: route_batch, one encoder call
        ds = router.route_batch(texts)
        res = metrics([d.adapter for d in ds], np.array([d.score for d in ds]), gold)
        cal = router.calibration
        res.update(
            threshold=cal.threshold,
            route_thresholds=len(cal.route_thresholds),
            objective=cal.objective,
            val_in_scope_accuracy=cal.fit_in_scope_accuracy,
            val_oos_recall=cal.fit_oos_recall,
        )
        res["_pred"] = [d.adapter for d in ds]
        return res

    res = run_real()
    res["fit_seconds"] = fit_s
    res["scorer"], res["knn_m"] = router.scorer, router.knn_m if router.scorer == "knn" else None
    res["candidates"] = dict(router.fit_candidates)
    if not full:
        res.pop("_pred")
        return res, None, router
    # The same fit at other operating points, all picked on val; the test scores are computed
    # once and thresholded here (checked against route_batch for the two reported rows).
    names, scores = router.score_texts(texts)
    top = scores.max(axis=1)
    if decide(router, names, scores) != res.pop("_pred"):
        raise AssertionError("thresholded scores disagree with route_batch (default objective)")

    def point() -> dict:
        m = metrics(decide(router, names, scores), top, gold)
        m.pop("auroc")
        m["val_in_scope_accuracy"] = router.calibration.fit_in_scope_accuracy
        m["val_oos_recall"] = router.calibration.fit_oos_recall
        return m

    res["operating_points"] = {}
    for w in W_GRID:
        router.recalibrate(oos_weight=w)
        res["operating_points"][str(w)] = point()
    res["recall_floors"] = {}
    for r in R_GRID:
        router.recalibrate(min_oos_recall=r)
        res["recall_floors"][str(r)] = point()
    router.recalibrate(min_oos_recall=MIN_OOS_RECALL)
    floor = run_real()
    if floor.pop("_pred") != decide(router, names, scores):
        raise AssertionError("thresholded scores disagree with route_batch (min_oos_recall)")
    router.recalibrate(oos_weight=OOS_WEIGHT)
    return res, floor, router


def bench_peer(routes, val, test):
    """``(default result, min_oos_recall result, route one text, route a batch)``."""
    from semantic_router import Route
    from semantic_router.encoders.local import LocalEncoder
    from semantic_router.routers import IndexedRouter
    from semantic_router.routers.base import run

    from loraroute.models import resolve_embedder

    enc = LocalEncoder(name=str(resolve_embedder("all-minilm-l6-v2").path), device="cpu")
    model_encode = enc._model.encode

    def encode_at_bench_threads(*args, **kwargs):
        # semantic-router encodes in worker threads of its own event loop; torch's thread
        # count is per OS thread, so the count the benchmark set in the main thread is
        # applied here too (without this its "1 thread" figure ran on 2).
        if BENCH_THREADS["n"] is not None:
            import torch

            torch.set_num_threads(BENCH_THREADS["n"])
        return model_encode(*args, **kwargs)

    enc._model.encode = encode_at_bench_threads
    router = IndexedRouter(
        enc, [Route(name=n, utterances=u) for n, u in routes.items()], top_k=5, aggregation="mean"
    )

    def score(texts):
        out = run(router._scores_many(texts))
        best = [max(s, key=s.__getitem__) if s else None for s in out]
        return best, np.array([s[b] if b else 0.0 for s, b in zip(out, best, strict=True)])

    vb, vs = score([t for t, _ in val])
    tb, ts = score([t for t, _ in test])
    gold = [i for _, i in test]
    results = []
    for floor in (None, MIN_OOS_RECALL):
        thr = pick_threshold(vb, vs, [i for _, i in val], floor)
        pred = [b if s >= thr else None for b, s in zip(tb, ts, strict=True)]
        res = metrics(pred, ts, gold)
        res["threshold"] = thr
        results.append(res)
    router.confidence_threshold = results[0]["threshold"]
    return results[0], results[1], router, lambda b: run(router._scores_many(b))


def paired_latency(fns: dict, texts: list[str]) -> dict:
    """Single-request latency of each router, request by request, alternating the order."""
    lat: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for n, t in enumerate(texts):
        for name in order if n % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[name](t)
            lat[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, xs in lat.items():
        xs.sort()
        out[name] = {"p50_ms": statistics.median(xs), "p99_ms": xs[int(0.99 * (len(xs) - 1))]}
    return out


def throughput(fns: dict, texts: list[str], warm: list[str], repeats: int = 3) -> dict:
    """Batch throughput of each router at torch's default thread count and at 1 thread.

    ``fns`` maps a name to ``(route_many, clear or None)``. Per thread count: one warm-up
    batch of other texts each (the first batches after a thread-count change ran 2-5x slower
    here), then ``repeats`` rounds in which every router routes the batch once, alternating
    which goes first (as for latency: a shared machine's load changes by the minute);
    ``clear()`` runs before each timed batch (our request-vector cache would otherwise turn
    repeats into cache hits). The median counts. 2 threads win when the other core is idle
    and lose badly when it is not, hence both figures.
    """
    import torch

    base = torch.get_num_threads()
    out: dict = {name: {"batch_size": len(texts), "repeats": repeats} for name in fns}
    order = list(fns)
    try:
        for threads in dict.fromkeys((base, 1)):
            torch.set_num_threads(threads)
            BENCH_THREADS["n"] = threads
            for route_many, _ in fns.values():
                route_many(warm)
            runs: dict[str, list[float]] = {name: [] for name in fns}
            for n in range(repeats):
                for name in order if n % 2 == 0 else order[::-1]:
                    route_many, clear = fns[name]
                    if clear is not None:
                        clear()
                    t0 = time.perf_counter()
                    route_many(texts)
                    runs[name].append(len(texts) / (time.perf_counter() - t0))
            for name, xs in runs.items():
                out[name][f"threads_{threads}"] = {
                    "median": statistics.median(xs),
                    "runs": xs,
                    "load_avg": os.getloadavg()[0],
                }
    finally:
        torch.set_num_threads(base)
        BENCH_THREADS["n"] = None
    for r in out.values():
        r["batch_requests_per_s"] = r[f"threads_{base}"]["median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument(
        "--protocols",
        default="domains,intents",
        help="'domains' alone is the issue's protocol (~15 min on a shared 2-core box); "
        "protocols not run keep their figures from the existing router.json (marked so).",
    )
    ap.add_argument("--scorings", default="auto,knn3,hybrid,head,centroid")
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
    n_single, n_batch = (50, 500) if args.quick else (300, 2000)
    out: dict = {
        "protocol": "CLINC150; thresholds/head fitted on val+oos_val; measured on test+oos_test "
        "(4500 in-scope, 1000 oos); an abstention on an in-scope request counts as wrong",
        "encoder": "all-MiniLM-L6-v2 (packaged), CPU",
        "min_oos_recall": MIN_OOS_RECALL,
        "oos_weight": OOS_WEIGHT,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()[0],
        },
        "protocols": {},
        "default_scorer": {},
    }
    for protocol in args.protocols.split(","):
        per_k: dict = {}
        for k in ks:
            routes, val, test = load(k, protocol)
            rk: dict = {}
            ours = None
            for scoring in args.scorings.split(","):
                full = scoring == DEFAULT_SCORING
                res, floor, router = bench_ours(routes, val, test, scoring, full)
                rk[f"loraroute[{scoring}]"] = res
                print(protocol, k, scoring, json.dumps(res), flush=True)
                if floor is not None:
                    rk[f"loraroute[{scoring}] min_oos_recall={MIN_OOS_RECALL}"] = floor
                    print(protocol, k, scoring, "floor", json.dumps(floor), flush=True)
                    ours = router
            if not args.no_peer:
                peer, peer_floor, peer_router, peer_many = bench_peer(routes, val, test)
                rk[PEER] = peer
                rk[f"{PEER} min_oos_recall={MIN_OOS_RECALL}"] = peer_floor
                print(protocol, k, "peer", json.dumps(peer), json.dumps(peer_floor), flush=True)
            texts = [t for t, _ in test][::-1]
            if ours is not None:
                ours.encoder.cache.clear()  # time real encoding, not cache hits
                fns = {OURS: ours.route}
                if not args.no_peer:
                    fns[PEER] = peer_router
                for name, lat in paired_latency(fns, texts[:n_single]).items():
                    rk[name].update(lat, latency_samples=n_single)
                batch = texts[n_single : n_single + n_batch]
                warm = texts[n_single + n_batch : n_single + n_batch + 200]
                many = {OURS: (ours.route_batch, ours.encoder.cache.clear)}
                if not args.no_peer:
                    many[PEER] = (peer_many, None)
                for name, tput in throughput(many, batch, warm).items():
                    rk[name].update(tput)
            per_k[f"K={k}"] = rk
        out["protocols"][protocol] = per_k
        out["default_scorer"][protocol] = DEFAULT_SCORING
    out["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    if not args.quick:
        keep_previous(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"router{suffix}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"router{suffix}.md").write_text(render(out))
    print(render(out))


def keep_previous(out: dict) -> None:
    """Copy protocols this run skipped from the committed router.json, marked as kept."""
    path = RESULTS / "router.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for protocol, per_k in old.get("protocols", {}).items():
        if protocol in out["protocols"]:
            continue
        out["protocols"][protocol] = per_k
        out["default_scorer"][protocol] = old.get("default_scorer", {}).get(protocol, "hybrid")
        prev = old.get("kept", {}).get(protocol) or {
            "machine": old.get("machine"),
            "commit": subprocess.run(
                ["git", "log", "-1", "--format=%h", "--", str(path)],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip(),
        }
        out.setdefault("kept", {})[protocol] = prev


def margin(rate: float, goal: float, n: int) -> str:
    """How many of ``n`` requests ``rate`` is above (+) or below (-) the ``goal`` rate."""
    return f"{round(rate * n) - math.ceil(goal * n - 1e-9):+d}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(out: dict) -> str:
    r_floor = out["min_oos_recall"]
    lines = [
        "# Router benchmark (CLINC150)",
        "",
        out["protocol"] + ".",
        "",
        f"Encoder: {out['encoder']}; machine: {out['machine']}.",
    ]
    titles = {
        "domains": "Issue protocol: 10 domains as adapters, K examples per domain "
        "(random.Random(0).sample, domains sorted)",
        "intents": "Harder variant: 150 intents as routes, the first K train examples of each",
    }
    thin: list[str] = []  # goals met by less than one point
    for protocol, per_k in out["protocols"].items():
        ours_name = f"loraroute[{out.get('default_scorer', {}).get(protocol, 'hybrid')}]"
        lines += ["", f"## {titles.get(protocol, protocol)}", ""]
        kept = out.get("kept", {}).get(protocol)
        if kept:
            lines += [
                f"Not re-run this time: the figures of commit {kept.get('commit')} (default "
                f"scorer then: {ours_name}; machine then: {kept.get('machine')}).",
                "",
            ]
        lines += [
            "| K | router | in-scope acc | OOS recall | OOS precision | AUROC | p50 ms | p99 ms "
            "| batch req/s (default threads / 1 thread) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for k, rk in per_k.items():
            for name, r in rk.items():
                t = (
                    f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batch_requests_per_s']:.0f}"
                    if "p50_ms" in r
                    else "- | - | -"
                )
                if "threads_1" in r and any(
                    key.startswith("threads_") and key != "threads_1" for key in r
                ):
                    t += f" / {r['threads_1']['median']:.0f}"
                label = name.replace(
                    f" min_oos_recall={r_floor}", f", OOS recall >= {r_floor} on val"
                )
                if name in (ours_name, PEER):
                    label += ", default (acc + 0.25 x recall)"
                if r.get("scorer") and name == ours_name:
                    m = f", m={r['knn_m']}" if r.get("knn_m") else ""
                    label += f" (fit chose: {r['scorer']}{m})"
                lines.append(
                    f"| {k[2:]} | {label} | {pct(r['in_scope_accuracy'])} | "
                    f"{pct(r['oos_recall'])} | {pct(r['oos_precision'])} | "
                    f"{r['auroc']:.3f} | {t} |"
                )
        for k, rk in per_k.items():
            hy = rk.get(ours_name, {})
            if "operating_points" not in hy:
                continue
            lines += [
                "",
                f"Operating points of {ours_name} at K={k[2:]}, one fit, thresholds picked "
                "on val (val figures are the calibration data's, test figures the held-out "
                "result):",
                "",
                "| objective | val acc | val OOS recall | test in-scope acc | test OOS recall "
                "| test OOS precision |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            rows = [(f"acc + {w} x recall", m) for w, m in hy["operating_points"].items()]
            rows += [(f"max acc, OOS recall >= {r}", m) for r, m in hy["recall_floors"].items()]
            lines += [
                f"| {label} | {pct(m['val_in_scope_accuracy'])} | {pct(m['val_oos_recall'])} | "
                f"{pct(m['in_scope_accuracy'])} | {pct(m['oos_recall'])} | "
                f"{pct(m['oos_precision'])} |"
                for label, m in rows
            ]
        lines += [
            "",
            "Goals of the issue at the two operating points fixed before the run"
            + (
                ":"
                if protocol == "domains"
                else " (the issue defines them on the domain protocol; applied here to the "
                "harder 150-route variant for comparison):"
            ),
            "",
        ]
        for k, rk in per_k.items():
            kk = int(k[2:])
            if kk not in GOALS:
                continue
            acc_goal, rec_goal = GOALS[kk]
            for name in (ours_name, f"{ours_name} min_oos_recall={r_floor}"):
                if name not in rk:
                    continue
                r = rk[name]
                ok = r["in_scope_accuracy"] >= acc_goal and r["oos_recall"] >= rec_goal
                if ok and min(r["in_scope_accuracy"] - acc_goal, r["oos_recall"] - rec_goal) < 0.01:
                    thin.append(f"{protocol} K={kk} {name}")
                lines.append(
                    f"- K={kk}, {name}: {pct(r['in_scope_accuracy'])} / {pct(r['oos_recall'])} "
                    f"vs >= {pct(acc_goal)} / >= {pct(rec_goal)}: {'met' if ok else 'MISSED'} "
                    f"({margin(r['in_scope_accuracy'], acc_goal, N_IN_SCOPE)} in-scope and "
                    f"{margin(r['oos_recall'], rec_goal, N_OOS)} OOS test requests from the bar)"
                )
            ours, peer = rk.get(ours_name, {}), rk.get(PEER, {})
            if "p50_ms" in ours and "p50_ms" in peer:
                lines.append(
                    f"- K={kk}, single-request latency (interleaved, {ours['latency_samples']} "
                    f"requests): ours p50 {ours['p50_ms']:.1f} / p99 {ours['p99_ms']:.1f} ms, "
                    f"peer p50 {peer['p50_ms']:.1f} / p99 {peer['p99_ms']:.1f} ms: "
                    + ("met" if ours["p50_ms"] <= peer["p50_ms"] else "MISSED")
                    + " at p50, "
                    + ("met" if ours["p99_ms"] <= peer["p99_ms"] else "MISSED")
                    + " at p99"
                )
            if "batch_requests_per_s" in ours:
                ok = ours["batch_requests_per_s"] >= 300
                one = ours.get("threads_1", {}).get("median")
                lines.append(
                    f"- K={kk}, batch throughput {ours['batch_requests_per_s']:.0f} req/s vs "
                    f">= 300: {'met' if ok else 'MISSED'}"
                    + (f" (1 thread: {one:.0f} req/s)" if one is not None else "")
                )
    transfer = []
    for protocol, per_k in out["protocols"].items():
        for k, rk in per_k.items():
            ours_name = f"loraroute[{out.get('default_scorer', {}).get(protocol, 'hybrid')}]"
            floors = rk.get(ours_name, {}).get("recall_floors", {})
            m = floors.get(str(r_floor))
            if m:
                transfer.append(
                    f"{protocol} K={k[2:]}: val {pct(m['val_oos_recall'])} -> test "
                    f"{pct(m['oos_recall'])}"
                )
    lines += ["", "## Notes", ""]
    if thin:
        lines.append(
            "- Met by less than one point (within the run-to-run noise below, so not with "
            "margin): " + "; ".join(thin) + "."
        )
    lines += [
        "- Calibration transfer: OOS recall measured on val (100 OOS requests) overstates the "
        f"recall on test (1,000 other OOS requests) at every operating point; at the floor "
        f"{r_floor}: " + "; ".join(transfer) + ". A recall floor met on the calibration data is "
        "therefore no promise about new traffic: the floor only holds on test if the "
        "calibration OOS set is as hard as the traffic's. The weighted default lands higher "
        "on the val recall curve, where the gap hurts less.",
        "- Default objective: thresholds maximise in-scope accuracy + 0.25 x OOS recall on val "
        "(w=0.25 fixed before any test figure was seen; it stays the product default: it needs "
        "no target from the user and leans towards abstaining, the cheaper mistake).",
        f"- `min_oos_recall={r_floor}`: `Router(min_oos_recall={r_floor})` / `adapters route fit "
        f"--min-oos-recall {r_floor}`: the best in-scope accuracy on val with OOS recall >= "
        f"{r_floor} on val. {r_floor} was fixed from the issue's goals before this run (the "
        "strictest floor, 55%, plus one standard error of a recall measured on 100 val OOS "
        "requests). The weight sweep of an earlier run (w=0.1 at K=50) had been seen on test "
        "before this objective existed, so this is not a blind choice in the strict sense; the "
        "floor sweep above is reported for transparency, not to pick from.",
        "- The peer is semantic-router 1.1.1 `IndexedRouter(top_k=5, aggregation='mean')` with "
        "the same MiniLM folder (its `LocalEncoder`) and the same examples; its one threshold is "
        "picked on val by the same objective as ours (it has no per-route thresholds), which "
        "gives it more OOS recall than the issue's figures. Its batch figure is its "
        "`_scores_many` (one embedding call, then a per-query index lookup).",
        "- Latency: ours and the peer's single requests alternate in one loop (which goes first "
        "alternates too), after our request cache is cleared, so both see the same load. The "
        "machine's 2 cores were shared with other jobs during the run (load average above); "
        "absolute latency and throughput are lower bounds.",
        "- Run-to-run: two runs of the 150-intent variant with the hybrid scorer (c91fdca, "
        "cd1d02a) read 92.2% / 82.3% and 92.8% / 80.4% at K=50 with a bit-identical "
        "calibration; the dev environment was rebuilt in between, and the head and thresholds "
        "react to float-level embedding differences; treat about 1 point as noise.",
        "- Default scorer: `auto`: the hybrid before `fit`; `fit` then weighs knn (neighbour "
        "count m = 3, 5 or 10) against the hybrid on the cross-fitted val scores and keeps the "
        "best by the calibration objective (the choice and each candidate's value are in "
        "router.json: `scorer`, `knn_m`). knn scores a route by the mean similarity of its m "
        "nearest neighbours, where the neighbours are the routing examples plus, after `fit`, "
        "the in-scope labelled fit requests. On the 10 domains the 3,000 in-scope val requests "
        "(300 a domain) make knn the better scorer, which is why K=10 and K=50 land close "
        "together; on the 150 intents (20 val requests an intent) the hybrid's head wins and "
        "auto keeps it. `knn3` is knn with m fixed at 3. knn for every router (an earlier "
        "default) failed an integration test unfitted (a clear maths question scored 0.2499 "
        "against the guessed threshold 0.25 with four examples), so knn waits for calibrated "
        "thresholds; why in router/scoring.py. The other scorers' rows use the same fit (the "
        "head scorers train their head on it; centroid ignores it).",
    ]
    tuning = RESULTS / "router_tuning.json"
    if tuning.is_file():
        runs = json.loads(tuning.read_text())["runs"]
        pairs = [
            f"K={k} {sc}: {pct(runs[f'K={k} {sc} as shipped']['in_scope_accuracy'])} / "
            f"{pct(runs[f'K={k} {sc} as shipped']['oos_recall'])} as shipped, "
            f"{pct(runs[f'K={k} {sc} tuned']['in_scope_accuracy'])} / "
            f"{pct(runs[f'K={k} {sc} tuned']['oos_recall'])} tuned"
            for k in (10, 50)
            for sc in ("auto", "centroid")
            if f"K={k} {sc} tuned" in runs
        ]
        lines.append(
            "- Encoder fine-tuning on the routing examples (SetFit-style contrastive, "
            "`benchmarks/bench_router_tuning.py`, results in router_tuning.md): "
            + "; ".join(pairs)
            + ". It does not measure better for the default scorer (the labelled fit requests "
            "it routes by already carry what the examples would teach the encoder); it helps "
            "the examples-only centroid scorer, which stays well below the default either way. "
            "So `fit` does not tune the encoder."
        )
    lines += [
        "- Batch throughput: `route_batch` over 2,000 test requests (one encoder call, then "
        "one scoring call and one evidence search for the batch), request-vector cache cleared "
        "before each; per torch thread count a warm-up batch of 200 other requests, then the "
        "median of 3 timed batches, ours and the peer's alternating (all runs and the load "
        "average in router.json). torch's thread count is per OS thread and semantic-router "
        "encodes in worker threads of its own event loop, so the benchmark applies the count "
        "there too (an earlier run of this script without that gave the peer a '1 thread' "
        "figure that had run on 2). That earlier run, 20 minutes before this one at load "
        "average 3.9 during K=10, read 254 req/s for both routers at 2 threads (ours 286 at "
        "1 thread): the 300 req/s goal holds on this machine only while the other core is "
        "mostly free. In encoder-only runs on this shared 2-core machine "
        "(load average 2-3, other engineers' jobs), 2 threads gave anywhere from 80 to 580 "
        "req/s from one batch to the next, 1 thread a steady 300-320; batch sizes 32-64 were "
        "best (16: same at 1 thread; 128-256: 5-20% slower); sentence-transformers already "
        "sorts a batch by length and we already encode under `torch.inference_mode`. The "
        "encoder is >90% of `route_batch`'s time (routing overhead 0.16 ms a request).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
