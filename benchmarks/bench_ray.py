"""Ray Serve deployment on one machine: adapter affinity and a replica killed mid-traffic.

A local Ray cluster (loopback, 2 logical CPUs) runs the loraroute application
(``loraroute.agents.server.rayserve.build_app``): the ingress and two engine replicas of
SmolLM2-135M (CPU, 1 CPU each), each with 2 adapter slots, over a fresh registry of four random
rank-8 LoRA adapters. A fixed, shuffled list of requests over the four adapters (greedy,
``max_tokens`` small) is sent by a few concurrent openai clients.

- ``affinity``: ours, Serve's model multiplexing with the adapter digest as the model id;
- ``no_affinity``: the peer, the same deployment without multiplexed ids (Serve's
  power-of-two-choices routing by queue length, blind to adapters: random placement);
- ``replica_killed``: affinity again, and one replica killed (``ray.kill``) once a third of the
  requests have been answered; every request must still be answered (sent again by the ingress).

Each answer says which replica ran it and whether the adapter was already resident there
(``loraroute.placement``): the share of requests landing on a replica that already holds their
adapter is counted over every request, first loads included.

    nice .venv/bin/python benchmarks/bench_ray.py [--requests 200] [--clients 4] [--quick]

Writes benchmarks/results/ray.json and ray.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ADAPTERS = ("cooking", "space", "legal", "math")
QUESTIONS = ("Hello!", "What should I ask you?", "Tell me one fact.", "Say something short.")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_registry(tmp: Path) -> tuple[Path, Path]:
    """A registry with the four adapters on SmolLM2; returns (home, base model folder)."""
    from loraroute.models import fingerprint, resolve_base_model
    from loraroute.registry import open_registry
    from loraroute.settings import Settings, default_home
    from loraroute.testing import make_random_lora

    base = resolve_base_model("smollm2-135m-instruct", settings=Settings(home=default_home())).path
    home = tmp / "home"
    settings = Settings(home=home)
    registry = open_registry(settings=settings)
    fp = fingerprint(base, settings=settings)
    for seed, name in enumerate(ADAPTERS, start=1):
        folder = make_random_lora(base, tmp / name, seed=seed, r=8)
        registry.push(folder, name, domain=name, base_fingerprint=fp)
    return home, base


def workload(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(ADAPTERS), rng.choice(QUESTIONS)) for _ in range(n)]


def send(client, model: str, question: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
        )
        out = raw.parse()
    except Exception as exc:  # noqa: BLE001 - a lost request is counted, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    info = out.model_extra["loraroute"]
    return {
        "ok": True,
        "seconds": time.perf_counter() - t0,
        "adapter": info["adapter"],
        "replica": info["placement"]["replica"].rsplit("#", 1)[-1],
        "held": bool(info["placement"]["adapter_was_resident"]),
        "attempts": info["placement"]["attempts"],
        "tokens": out.usage.completion_tokens,
    }


def metric(url: str, name: str) -> float | None:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, flags=re.M)
    return float(m.group(1)) if m else None


def run(
    client, url: str, work: list[tuple[str, str]], clients: int, max_tokens: int, on_done=None
) -> dict:
    done = 0
    lock = threading.Lock()

    def one(item: tuple[str, str]) -> dict:
        nonlocal done
        out = send(client, item[0], item[1], max_tokens)
        with lock:
            done += 1
            if on_done is not None and out["ok"]:
                on_done(done, out)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, work))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    per_adapter: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in ok:
        per_adapter[r["adapter"]][r["replica"]] += 1
    lat = sorted(r["seconds"] for r in ok)
    return {
        "requests": len(results),
        "answered": len(ok),
        "lost": len(results) - len(ok),
        "errors": [r["error"] for r in results if not r["ok"]][:5],
        "held": sum(r["held"] for r in ok),
        "held_share": sum(r["held"] for r in ok) / max(1, len(ok)),
        "retried": sum(r["attempts"] > 1 for r in ok),
        "wall_s": wall,
        "req_per_s": len(ok) / wall,
        "tok_per_s": sum(r["tokens"] for r in ok) / wall,
        "p50_s": statistics.median(lat) if lat else None,
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "replicas": dict(collections.Counter(r["replica"] for r in ok)),
        "per_adapter": {a: dict(c) for a, c in sorted(per_adapter.items())},
        "engine_loads": metric(url, "loraroute_adapter_loads"),
    }


def deploy(serve, args_fields: dict, port: int):
    from loraroute.agents.server.rayserve import RayServeArgs, build_app

    t0 = time.perf_counter()
    serve.run(build_app(RayServeArgs(**args_fields)), name="loraroute", route_prefix="/")
    log(f"deployed in {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="40 requests a run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ns = ap.parse_args(argv)
    n = 40 if ns.quick else ns.requests
    # a cluster that writes only inside its temporary folder and reports nothing anywhere
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openai
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory(prefix="lr-bench-ray-") as tmpdir:
        tmp = Path(tmpdir)
        home, base = setup_registry(tmp)
        t0 = time.perf_counter()
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray")
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
        fields = {
            "base_model": str(base),
            "home": str(home),
            "num_replicas": 2,
            "max_resident": 2,
            "max_batch_size": 4,
            "cpus_per_replica": 1,
            "router": False,
        }
        runs: dict[str, dict] = {}
        try:
            startup = {"cluster_s": time.perf_counter() - t0}
            for name, affinity in (("affinity", True), ("no_affinity", False)):
                startup[f"deploy_{name}_s"] = deploy(serve, {**fields, "affinity": affinity}, port)
                log(f"{name}: {n} requests, {ns.clients} clients")
                runs[name] = run(client, url, workload(n, ns.seed), ns.clients, ns.max_tokens)
                log(f"{name}: {runs[name]['held_share']:.1%} held, {runs[name]['lost']} lost")
            startup["deploy_replica_killed_s"] = deploy(serve, {**fields, "affinity": True}, port)
            killed: dict = {}

            def kill_at_third(done: int, last: dict) -> None:
                if done >= n // 3 and not killed:  # the replica that answered last
                    actor = f"SERVE_REPLICA::loraroute#LoraRouteEngine#{last['replica']}"
                    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
                    killed.update(replica=last["replica"], at=time.perf_counter())
                    log(f"killed replica {last['replica']} after {done} answers")

            log(f"replica_killed: {n} requests, {ns.clients} clients")
            runs["replica_killed"] = run(
                client, url, workload(n, ns.seed + 1), ns.clients, ns.max_tokens, kill_at_third
            )
            runs["replica_killed"]["killed_replica"] = killed.get("replica")
            recovered = None
            while killed and time.perf_counter() - killed["at"] < 120:
                status = serve.status().applications["loraroute"].deployments["LoraRouteEngine"]
                if status.replica_states.get("RUNNING") == 2:
                    recovered = time.perf_counter() - killed["at"]
                    break
                time.sleep(0.5)
            runs["replica_killed"]["replacement_running_after_s"] = recovered
            log(
                f"replica_killed: {runs['replica_killed']['lost']} lost, "
                f"{runs['replica_killed']['retried']} sent again"
            )
        finally:
            serve.shutdown()
            ray.shutdown()

    aff, peer, kill = runs["affinity"], runs["no_affinity"], runs["replica_killed"]
    goals = {
        "two replicas, 4 adapters: >= 95% of requests land on a replica already holding the "
        "adapter": {
            "met": aff["held_share"] >= 0.95 and aff["lost"] == 0,
            "detail": f"{aff['held_share']:.1%} ({aff['held']} of {aff['answered']}, first loads "
            f"included); without affinity {peer['held_share']:.1%}",
        },
        "zero lost requests when one replica dies": {
            "met": kill["lost"] == 0 and kill["killed_replica"] is not None,
            "detail": f"{kill['lost']} lost of {kill['requests']}; {kill['retried']} sent again "
            f"to the surviving replica; replacement running after "
            f"{kill['replacement_running_after_s'] or float('nan'):.1f} s",
        },
    }
    data = {
        "command": "python benchmarks/bench_ray.py" + (" --quick" if ns.quick else ""),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "ray": ray.__version__,
        "config": {
            "requests": n,
            "clients": ns.clients,
            "max_tokens": ns.max_tokens,
            "replicas": 2,
            "slots_per_replica": 2,
            "max_batch_size": 4,
            "adapters": len(ADAPTERS),
            "seed": ns.seed,
        },
        "startup": startup,
        "runs": runs,
        "goals": goals,
    }
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "ray.json").write_text(json.dumps(data, indent=1) + "\n")
    write_md(data, ns.out / "ray.md")
    for name, g in goals.items():
        log(f"{'met' if g['met'] else 'MISSED'}: {name}: {g['detail']}")
    return 0


def write_md(data: dict, path: Path) -> None:
    c = data["config"]
    lines = [
        "# Ray Serve: adapter affinity and a replica killed mid-traffic",
        "",
        f"Command: `{data['command']}` ({data['machine']}, load {data['loadavg']}, Ray "
        f"{data['ray']}). A local Ray cluster on loopback; {c['replicas']} engine replicas of "
        f"SmolLM2-135M (CPU, 1 CPU each, {c['slots_per_replica']} adapter slots, batch "
        f"{c['max_batch_size']}); {c['adapters']} random rank-8 adapters; {c['requests']} "
        f"requests a run from {c['clients']} openai clients, greedy, max_tokens "
        f"{c['max_tokens']}.",
        "",
        "| run | held (adapter already on the replica) | lost | sent again | engine loads | "
        "req/s | p50 | p99 | requests per replica |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in data["runs"].items():
        loads = r["engine_loads"]
        lines.append(
            f"| {name} | {r['held_share']:.1%} ({r['held']}/{r['answered']}) | {r['lost']} | "
            f"{r['retried']} | {'-' if loads is None else int(loads)} | {r['req_per_s']:.2f} | "
            f"{r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
            f"{', '.join(str(v) for v in r['replicas'].values())} |"
        )
    lines += ["", "Requests per adapter and replica:", ""]
    for name, r in data["runs"].items():
        lines.append(
            f"- {name}: "
            + "; ".join(
                f"{a}: {', '.join(f'{rep} {k}' for rep, k in reps.items())}"
                for a, reps in r["per_adapter"].items()
            )
        )
    s = data["startup"]
    lines += [
        "",
        "Start-up: cluster "
        + f"{s['cluster_s']:.1f} s; "
        + "; ".join(f"{k[7:-2]} deployed in {v:.1f} s" for k, v in s.items() if k != "cluster_s"),
        "",
        "## Goals",
        "",
    ]
    for name, g in data["goals"].items():
        lines.append(f"- {name}: **{'met' if g['met'] else 'missed'}** ({g['detail']})")
    lines += [
        "",
        "## Reading",
        "",
        "- 'held' counts every request, the first load of each adapter included; a request "
        "that arrives while its adapter is still loading counts as not held.",
        "- Without affinity Serve picks the shorter of two queues, blind to adapters: with 2 "
        "slots for 4 adapters a replica holds the adapter about half the time.",
        "- 'engine loads' is the ingress's `loraroute_adapter_loads` at the end of the run: the "
        "engine pools' loads as each replica last reported them (a killed replica's count "
        "stays as it was).",
        "- In 'replica_killed' the requests running on the killed replica fail with Ray's "
        "ActorDiedError and the ingress sends them again; until Serve's replacement replica "
        "is up, the survivor serves all four adapters through its 2 slots, so held falls "
        "while it is alone.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
