"""The Ray Serve deployment on a local Ray cluster (loopback): two CPU engine replicas of
SmolLM2, four adapters, the real openai client. Requests go to the replica that holds their
adapter (each answer names its replica), and a replica killed mid-traffic loses no request.

About 60-110 s on 2 cores (more on a busy machine), most of it Ray starting and two replicas
loading SmolLM2.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from loraroute.testing import make_random_lora

pytestmark = pytest.mark.slow

EXAMPLES = {
    "cooking": ["How long do I boil an egg?", "A recipe for pancakes", "How do I roast carrots?"],
    "space": ["Why is Mars red?", "How far away is the Moon?", "What is a black hole?"],
    "legal": ["Is this NDA clause enforceable?", "Can my landlord keep the deposit?"],
    "math": ["Solve 2x + 3 = 7", "What is the derivative of x squared?"],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs whose files stay in this test's temporary folder."""
    import ray
    from ray import serve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # no token file under ~/.ray
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline
        # Serve kills an HTTP proxy not ready in 5 s (and serve.start fails with it): on a
        # busy 2-core machine its process can take longer to import and start
        mp.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
        mp.setenv("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
        )
        try:
            yield ray
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def served(cluster, smollm2_path, tmp_path_factory):
    """The application on the cluster: ingress + 2 engine replicas of 2 adapter slots each;
    yields an openai client and the registry's versions."""
    from ray import serve

    from loraroute.agents.server.rayserve import RayServeArgs, build_app
    from loraroute.models import fingerprint
    from loraroute.registry import open_registry
    from loraroute.settings import Settings

    tmp = tmp_path_factory.mktemp("rayserve")
    settings = Settings(home=tmp / "home")
    registry = open_registry(settings=settings)
    fp = fingerprint(smollm2_path, settings=settings)
    versions = {}
    for seed, (name, examples) in enumerate(EXAMPLES.items(), start=1):
        folder = make_random_lora(smollm2_path, tmp / name, seed=seed)
        versions[name] = registry.push(
            folder, name, domain=name, base_fingerprint=fp, routing_examples=examples
        )
        registry.alias_set(name, "prod", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = RayServeArgs(
        base_model=str(smollm2_path),
        home=str(settings.home),
        num_replicas=2,
        max_resident=2,  # 4 adapters, 2 replicas x 2 slots: placement matters
        max_batch_size=4,
        cpus_per_replica=1,
    )
    serve.run(build_app(args), name="loraroute", route_prefix="/")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    yield client, versions
    serve.delete("loraroute")


def ask(client, model: str, max_tokens: int = 2, content: str = "Hello"):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
    )
    out = raw.parse()
    assert out.system_fingerprint.startswith("sha256:")  # the replicas' base model
    info = out.model_extra["loraroute"]
    assert raw.headers["x-loraroute-replica"] == info["placement"]["replica"]  # where it ended
    return out, info


def settle(client, names: list[str], rounds: int = 12) -> None:
    """Asks for each adapter in turn until a whole round finds every one resident where it
    landed: the first loads are placed before Serve's routers learn where anything is (a
    replica reports its adapters within about 0.1 s of a load), so the first requests at once
    may load an adapter on both replicas or three on one."""
    seen = []
    for _ in range(rounds):
        seen.append([ask(client, name)[1]["placement"]["adapter_was_resident"] for name in names])
        if all(seen[-1]):
            return
        time.sleep(0.3)  # the replicas' reports reach the ingress's router
    raise AssertionError(f"placement never settled: adapter_was_resident per round {seen}")


def test_requests_go_to_the_replica_that_holds_their_adapter(served):
    client, versions = served
    names = list(EXAMPLES)
    settle(client, names)  # 4 adapters on 2 replicas of 2 slots: 2 on each, all resident
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: ask(client, names[i % 4]), range(48)))
    by_adapter = collections.defaultdict(collections.Counter)
    held = 0
    for out, info in answers:
        assert out.choices[0].message.content is not None
        assert info["adapter_digest"] == versions[info["requested_model"]].digest
        by_adapter[info["adapter"]][info["placement"]["replica"]] += 1
        held += info["placement"]["adapter_was_resident"]
    replicas = {r for counts in by_adapter.values() for r in counts}
    assert len(replicas) == 2, by_adapter  # both replicas served
    for counts in by_adapter.values():  # each adapter stays on one replica (random: ~50/50)
        assert counts.most_common(1)[0][1] >= 0.9 * sum(counts.values()), by_adapter
    # a request lands where its adapter is already resident (random placement over 2
    # replicas of 2 slots: about half); a request may still go elsewhere when its replica
    # has max_ongoing_requests (4) running
    assert held >= 0.9 * len(answers), by_adapter


def test_streams_report_their_replica_and_auto_routes(served):
    client, versions = served
    chunks = list(
        client.chat.completions.create(
            model="space",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
            stream=True,
        )
    )
    first = chunks[0].model_extra["loraroute"]
    assert first["adapter"] == versions["space"].ref
    assert first["placement"]["replica"].startswith("SERVE_REPLICA::loraroute#LoraRouteEngine#")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    # a client that goes away stops the generation on the replica, not only at the ingress
    from ray import serve

    stream = client.chat.completions.create(
        model="space",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=400,
        temperature=0,
        stream=True,
    )
    next(iter(stream))
    stream.close()
    engine = serve.get_deployment_handle("LoraRouteEngine", app_name="loraroute")
    holder = engine.options(multiplexed_model_id=versions["space"].digest)
    deadline = time.monotonic() + 5  # 400 tokens take far longer on one CPU
    while holder.info.remote().result()["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert holder.info.remote().result()["running"] == 0

    # the ingress routes model="auto" with the router over the registry (MiniLM)
    out, info = ask(client, "auto", content="How long should I boil an egg for?")
    assert info["routed"] and info["adapter"] == versions["cooking"].ref


def test_a_replica_killed_mid_traffic_loses_no_request(served, cluster):
    client, _ = served
    _, info = ask(client, "cooking")
    victim = info["placement"]["replica"]
    siblings = [  # the adapters on the victim, so requests are running there when it dies
        name for name in EXAMPLES if ask(client, name)[1]["placement"]["replica"] == victim
    ]
    results: list = []

    def one(i: int):
        try:
            return ask(client, siblings[i % len(siblings)], max_tokens=24)[1]["placement"]
        except openai.APIError as exc:  # a lost request: counted, not raised
            return exc

    def kill_soon():
        time.sleep(0.6)  # the first wave is generating on the victim
        cluster.kill(cluster.get_actor(victim, namespace="serve"), no_restart=True)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(12)))
    killer.join()
    lost = [r for r in results if isinstance(r, Exception)]
    assert not lost, lost
    assert any(r["attempts"] > 1 for r in results), results  # some were sent again
    assert all(r["replica"] != victim for r in results if r["attempts"] > 1)
