"""Drift benchmark on CLINC150: does ``adapters drift`` catch traffic that shifts, and stay quiet
on traffic that does not?

Setup (fixed before the first run):

- Adapters: six CLINC150 domains (banking, credit_cards, home, kitchen_and_dining, travel,
  work), 50 routing examples each drawn from ``train`` with ``random.Random(0)``; the router is
  loraroute's default (all-MiniLM-L6-v2, ``auto`` scoring) fitted on ``val`` + ``oos_val`` with
  the other four domains and CLINC's out-of-scope requests labelled out of scope.
- Traffic is drawn (with replacement) from ``test`` + ``oos_test``. Baseline mix: 90% adapter
  domains (15% each), 10% out of scope (half CLINC out-of-scope, half the other domains).
- Every stream starts with 5,500 baseline requests (the reference window fills). An
  **unshifted** stream then goes on with 5,000 more baseline requests. A **shifted** stream
  changes its mix at that point and then holds it; three scenarios: ``oos`` (out of scope
  10% -> 40%), ``domain`` (travel 15% -> 60%) and ``both`` (out of scope 10% -> 30% and
  travel 15% -> 45%). The change is a step (the goal's scenario: traffic that has shifted, so
  its first 500 requests are shifted ones) or a linear ramp over 500 or 1,000 requests.
  The first run used only the 1,000-request ramp: detection took 450-750 requests, since at
  request 500 of that ramp the recent window holds a quarter of the final shift, within the
  noise of the unshifted checks; the step and the 500-request ramp were added after it, and
  the thresholds were left as they were.
- A check every 50 requests, as a cron job running ``adapters drift`` with its defaults would:
  the newest 500 decisions against the 5,000 before them, default thresholds
  (:class:`loraroute.router.drift.Thresholds`). The delay of a shifted stream is the number of
  requests from the shift's start to the first check that alarms (a multiple of 50).
- Ten seeds per stream. Every request is embedded and routed once (``route_batch``); the
  streams reuse the decisions. One shifted stream is also written through the real
  :class:`~loraroute.registry.decisions.DecisionLog` (SQLite) and compared by ``from_log``,
  which must give the same alarms; its windows are plotted to ``drift.png``.

Goals (issue #20): every shifted stream flagged within its first 500 requests; no alarm on the
unshifted streams (5,000 requests each, every seed).

    .venv/bin/python benchmarks/bench_drift.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_drift.py --tiny --out /tmp/drift   # hashing encoder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
DOMAINS = ROOT.parent / "shared" / "data" / "clinc150" / "domains.json"
RESULTS = ROOT / "benchmarks" / "results"
ADAPTERS = ("banking", "credit_cards", "home", "kitchen_and_dining", "travel", "work")
K = 50
WARMUP = 5_500  # baseline requests before the stream proper: reference 5,000 + recent 500
STREAM = 5_000
RAMPS = (0, 500, 1_000)  # requests over which a shift ramps in (0: a step at the change point)
EVERY = 50
RECENT, REFERENCE = 500, 5_000
BASE_OOS = 0.10
SHIFT_DOMAIN = "travel"
SCENARIOS = {  # name -> (final out-of-scope share, final share of SHIFT_DOMAIN)
    "oos": (0.40, None),
    "domain": (BASE_OOS, 0.60),
    "both": (0.30, 0.45),
}
GOAL_DELAY = 500


def load():
    d = json.loads(DATA.read_text())
    dom = {i: k for k, v in json.loads(DOMAINS.read_text()).items() for i in v}
    pool: dict[str, list[str]] = {}
    for text, intent in d["train"]:
        pool.setdefault(dom[intent], []).append(text)
    rng = random.Random(0)
    routes = {k: rng.sample(pool[k], K) for k in sorted(ADAPTERS)}
    fit = [(t, dom[i] if dom[i] in ADAPTERS else None) for t, i in d["val"]]
    fit += [(t, None) for t, _ in d["oos_val"]]
    traffic: dict[str, list[str]] = {"oos": [t for t, _ in d["oos_test"]], "other": []}
    for text, intent in d["test"]:
        traffic.setdefault(dom[intent] if dom[intent] in ADAPTERS else "other", []).append(text)
    return routes, fit, traffic


def mix(oos: float, shift: float | None) -> dict[str, float]:
    """Source probabilities: ``oos`` out of scope (half CLINC oos, half other domains), the rest
    over the adapter domains (``shift`` of all traffic to SHIFT_DOMAIN when given)."""
    p = {"oos": oos / 2, "other": oos / 2}
    inside = 1.0 - oos
    if shift is None:
        p.update({a: inside / len(ADAPTERS) for a in ADAPTERS})
    else:
        rest = (inside - shift) / (len(ADAPTERS) - 1)
        p.update({a: shift if a == SHIFT_DOMAIN else rest for a in ADAPTERS})
    return p


def stream(
    rng, sources, offsets, n_base: int, n_after: int, scenario: str | None, ramp: int = 0
) -> np.ndarray:
    """Indices into the decision arrays: ``n_base`` baseline requests, then ``n_after`` more
    (baseline, or ramping to ``scenario`` over ``ramp`` requests)."""
    names = list(sources)
    base = mix(BASE_OOS, None)
    final = base if scenario is None else mix(*SCENARIOS[scenario])
    out = np.empty(n_base + n_after, np.int64)
    for j in range(n_base + n_after):
        f = 0.0 if j < n_base else min(1.0, (j - n_base + 1) / max(ramp, 1))
        p = np.array([(1 - f) * base[s] + f * final[s] for s in names])
        s = names[rng.choice(len(names), p=p / p.sum())]
        out[j] = offsets[s] + rng.integers(len(sources[s]))
    return out


def run_checks(idx, routes, scores, dist, start: int, stop_at_alarm: bool):
    """Checks every EVERY requests from ``start``: [(requests since start, alarms, figures)]."""
    from loraroute.router.drift import Window, compare

    out = []
    for end in range(start, len(idx) + 1, EVERY):
        cur, ref = idx[end - RECENT : end], idx[end - RECENT - REFERENCE : end - RECENT]
        rep = compare(
            Window([routes[i] for i in ref], scores[ref], distances=dist[ref]),
            Window([routes[i] for i in cur], scores[cur], distances=dist[cur]),
        )
        figures = {
            "share_change": rep.share_change,
            "fallback_change": abs(rep.fallback_rate["change"]),
            "psi": rep.score["psi"],
            "ks_statistic": rep.score["ks_statistic"],
            "distance_change": rep.distance["change"],
        }
        out.append((end - start, rep.alarms, figures))
        if stop_at_alarm and rep.alarms:
            break
    return out


def cross_check(router, decisions, idx, end: int, plot: Path) -> dict:
    """The same check through the real decision log (SQLite) and from_log."""
    from loraroute.registry.decisions import DecisionLog, DecisionRecord
    from loraroute.router._drift_plot import plot_drift
    from loraroute.router.drift import from_log

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        log = DecisionLog.open(f"sqlite:///{tmp}/registry.db")
        record_s = []
        for j, i in enumerate(idx[:end]):
            d = decisions[i]
            rec = DecisionRecord(
                adapter=d.ref or d.adapter,
                best=d.best,
                score=d.score,
                margin=d.margin,
                confidence=d.confidence,
                reason=d.reason,
                encoder=router.encoder.name,
                embedding=d.embedding,
                at=t0 + timedelta(seconds=j),
            )
            t = time.perf_counter()
            log.record(rec)
            record_s.append(time.perf_counter() - t)
        log.flush(120)
        t = time.perf_counter()
        windows = from_log(log, router, recent=RECENT, reference=REFERENCE)
        from_log_s = time.perf_counter() - t
        dropped = log.dropped
        log.close()
    plot_drift(windows, plot)
    return {
        "decisions": int(end),
        "alarms": windows.report.alarms,
        "record_call_us_median": 1e6 * float(np.median(record_s)),
        "record_call_us_p99": 1e6 * float(np.quantile(record_s, 0.99)),
        "dropped": dropped,
        "from_log_seconds": from_log_s,
        "report": windows.report.to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="hashing encoder, 2 seeds (tests)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    seeds = 2 if args.tiny else args.seeds
    from loraroute.router import Router
    from loraroute.router.drift import example_vectors, nearest_distance

    t_start = time.perf_counter()
    routes, fit, traffic = load()
    encoder = "hashing" if args.tiny else "all-minilm-l6-v2"
    router = Router.from_examples(routes, encoder=encoder)
    t = time.perf_counter()
    router.fit([x for x, _ in fit], [y for _, y in fit])
    fit_s = time.perf_counter() - t
    sources = {k: traffic[k] for k in [*ADAPTERS, "oos", "other"]}
    texts = [x for k in sources for x in sources[k]]
    offsets, o = {}, 0
    for k in sources:
        offsets[k], o = o, o + len(sources[k])
    t = time.perf_counter()
    decisions = router.route_batch(texts)
    route_s = time.perf_counter() - t
    r_names = [d.adapter or "base" for d in decisions]
    scores = np.array([d.score for d in decisions])
    ex_vec, _, _ = example_vectors(router)
    dist = nearest_distance(np.stack([d.embedding for d in decisions]), ex_vec)

    unshifted = []
    null_max: dict[str, float] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = stream(rng, sources, offsets, WARMUP, STREAM, None)
        checks = run_checks(idx, r_names, scores, dist, WARMUP, stop_at_alarm=False)
        alarms = [(n, a) for n, a, _ in checks if a]
        for _, _, figures in checks:
            for k, v in figures.items():
                if v is not None:
                    null_max[k] = max(null_max.get(k, -1.0), float(v))
        unshifted.append(
            {"seed": seed, "checks": len(checks), "alarms": len(alarms), "first": alarms[:3]}
        )
    shifted: dict[str, dict[str, list[dict]]] = {}
    cross = None
    for ramp in RAMPS:
        for scenario in SCENARIOS:
            rows = shifted.setdefault(str(ramp), {})[scenario] = []
            for seed in range(seeds):
                rng = np.random.default_rng(1000 + seed)
                idx = stream(rng, sources, offsets, WARMUP, 2 * max(RAMPS), scenario, ramp)
                checks = run_checks(idx, r_names, scores, dist, WARMUP, stop_at_alarm=True)
                hit = next(((n, a) for n, a, _ in checks if a), None)
                rows.append(
                    {
                        "seed": seed,
                        "delay": None if hit is None else hit[0],
                        "alarms": [] if hit is None else hit[1],
                    }
                )
                if (ramp, scenario, seed) == (0, "both", 0) and hit is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    end = WARMUP + hit[0]
                    cross = cross_check(router, decisions, idx, end, args.out / "drift.png")
                    cross["matches_array_path"] = cross["alarms"] == hit[1]

    delays = {
        ramp: {sc: [r["delay"] for r in rows] for sc, rows in by.items()}
        for ramp, by in shifted.items()
    }

    def caught(ramp: str) -> bool:
        return all(d is not None and d <= GOAL_DELAY for ds in delays[ramp].values() for d in ds)

    def detail(ramp: str) -> str:
        return "; ".join(
            f"{sc}: worst {max((d for d in ds if d is not None), default='-')}"
            f", median {int(np.median([d for d in ds if d is not None] or [0]))}"
            f", missed {sum(d is None for d in ds)}"
            for sc, ds in delays[ramp].items()
        )

    false_alarms = sum(u["alarms"] for u in unshifted)
    quiet_seeds = sum(u["alarms"] == 0 for u in unshifted)
    out = {
        "setup": {
            "adapters": list(ADAPTERS),
            "routing_examples_per_adapter": K,
            "encoder": router.encoder.name,
            "scorer": router.scorer,
            "pool_texts": len(texts),
            "warmup": WARMUP,
            "stream": STREAM,
            "ramps": list(RAMPS),
            "check_every": EVERY,
            "recent": RECENT,
            "reference": REFERENCE,
            "seeds": seeds,
            "scenarios": {k: {"oos": v[0], SHIFT_DOMAIN: v[1]} for k, v in SCENARIOS.items()},
            "thresholds": cross["report"]["thresholds"] if cross else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
        "baseline_fallback_rate": float(
            np.mean(
                [
                    r_names[i] == "base"
                    for i in stream(np.random.default_rng(0), sources, offsets, 5000, 0, None)
                ]
            )
        ),  # fmt: skip
        "unshifted": unshifted,
        "unshifted_false_alarm_checks": false_alarms,
        "unshifted_checks": sum(u["checks"] for u in unshifted),
        "shifted": shifted,
        "delays": delays,
        "unshifted_figure_max": null_max,
        "db_cross_check": cross,
        "timings": {
            "fit_seconds": fit_s,
            "route_seconds": route_s,
            "total_seconds": time.perf_counter() - t_start,
        },
        "goals": {
            "shifted_flagged_within_500": {
                "met": caught("0"),
                "detail": f"the mix changes at one point in time: {detail('0')}",
            },
            **{
                f"ramp_{ramp}_flagged_within_500": {
                    "met": caught(str(ramp)),
                    "detail": f"the mix ramps in over {ramp} requests: {detail(str(ramp))}",
                }
                for ramp in RAMPS
                if ramp
            },
            "unshifted_quiet_over_5000": {
                "met": false_alarms == 0,
                "detail": f"{false_alarms} alarming checks of {sum(u['checks'] for u in unshifted)}"
                f"; {quiet_seeds}/{seeds} seeds without any alarm over {STREAM} requests",
            },
        },
    }
    if cross is not None:
        out["goals"]["decision_log_path_agrees"] = {
            "met": bool(cross["matches_array_path"]) and cross["dropped"] == 0,
            "detail": f"from_log over SQLite gave {cross['alarms']}; record() "
            f"{cross['record_call_us_median']:.1f} us median per call, {cross['dropped']} dropped",
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(out, indent=2))
    (args.out / "drift.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    s = out["setup"]
    lines = [
        "# Drift benchmark (CLINC150)",
        "",
        f"Adapters: {', '.join(s['adapters'])} ({s['routing_examples_per_adapter']} routing "
        f"examples each; encoder {s['encoder']}, scorer {s['scorer']}). Baseline traffic: 90% "
        f"adapter domains, 10% out of scope (fallback rate on baseline traffic "
        f"{100 * out['baseline_fallback_rate']:.1f}%). A check every {s['check_every']} "
        f"requests: the newest {s['recent']} decisions against the {s['reference']} before "
        f"them, default thresholds; {s['seeds']} seeds. Produced by "
        f"`benchmarks/bench_drift.py` ({s['machine']}).",
        "",
        "## Goals",
        "",
    ]
    for name, g in out["goals"].items():
        lines.append(f"- **{name}**: {'met' if g['met'] else 'NOT met'}: {g['detail']}")
    lines += [
        "",
        "## Shifted streams: requests from the shift's start to the first alarm",
        "",
        f"Delays are multiples of the check interval; {s['seeds']} seeds each, sorted.",
        "",
        "| ramp | scenario | final mix | delays | worst | first alarms (seed 0) |",
        "|---|---|---|---|---|---|",
    ]
    for ramp, by in out["shifted"].items():
        for name, rows in by.items():
            sc = s["scenarios"][name]
            final = f"out of scope {100 * sc['oos']:.0f}%" + (
                "" if sc.get("travel") is None else f", travel {100 * sc['travel']:.0f}%"
            )
            ds = sorted(d for d in out["delays"][ramp][name] if d is not None)
            missed = sum(r["delay"] is None for r in rows)
            worst = (max(ds) if ds else "-") if not missed else f"missed {missed}"
            first = "; ".join(rows[0]["alarms"]) or "-"
            label = "step" if ramp == "0" else f"{ramp} requests"
            lines.append(f"| {label} | {name} | {final} | {ds} | {worst} | {first} |")
    nm = out["unshifted_figure_max"]
    th = s["thresholds"] or {}
    lines += [
        "",
        "Largest value of each figure over every check of the unshifted streams, against its "
        "default threshold: "
        + ", ".join(
            f"{k} {v:.3f} (threshold {th.get(t, '-')})"
            for k, v, t in (
                ("share change", nm.get("share_change", 0), "share"),
                ("fallback change", nm.get("fallback_change", 0), "fallback"),
                ("PSI", nm.get("psi", 0), "psi"),
                ("KS statistic", nm.get("ks_statistic", 0), "ks"),
                ("distance change", nm.get("distance_change", 0), "distance"),
            )
        )
        + ".",
    ]
    lines += [
        "",
        "## Unshifted streams",
        "",
        f"{out['unshifted_false_alarm_checks']} alarming checks of {out['unshifted_checks']} "
        f"({s['stream']} requests a seed, a check every {s['check_every']}).",
        "",
    ]
    cross = out.get("db_cross_check")
    if cross:
        lines += [
            "## Through the decision log",
            "",
            f"Seed 0 of `both`, {cross['decisions']} decisions written by `DecisionLog` into "
            f"SQLite, then `from_log` (what `adapters drift` runs): alarms "
            f"{cross['alarms']} (same as the array path: {cross['matches_array_path']}); "
            f"`record()` costs the request {cross['record_call_us_median']:.1f} us (median; "
            f"p99 {cross['record_call_us_p99']:.1f} us), {cross['dropped']} dropped; "
            f"`from_log` took {cross['from_log_seconds']:.2f} s. Plot: `drift.png`.",
            "",
        ]
    t = out["timings"]
    lines.append(
        f"Fit {t['fit_seconds']:.1f} s, routing the pool {t['route_seconds']:.1f} s, total "
        f"{t['total_seconds']:.0f} s."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
