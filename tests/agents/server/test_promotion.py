"""The promotion gate on a running server: a pushed version is not routed to until the serving
alias points at it, then it is, without a restart (the router follows the registry's revision)."""

from __future__ import annotations

import time

import httpx
import openai
from click.testing import CliRunner

from loraroute.agents.server.testing import ROUTES

GARDEN_Q = "when should I prune my roses and water the tomato seedlings?"
GARDEN = [
    "when should I prune roses",
    "how often do I water tomato seedlings",
    "what soil do blueberries like",
    "how do I keep aphids off my garden plants",
]


def _routed(client: openai.OpenAI) -> str | None:
    out = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": GARDEN_Q}], max_tokens=2
    )
    return out.model_extra["loraroute"]["adapter"]


def test_pushed_version_is_routed_only_once_promoted(lr_home, tiny_base, tiny_adapter_factory):
    from loraroute.agents.runtime import Engine
    from loraroute.agents.server import BackgroundServer, LocalBackend, create_app
    from loraroute.cli import main
    from loraroute.registry import open_registry

    reg = open_registry(settings=lr_home)
    for i, (name, examples) in enumerate(ROUTES.items(), start=1):
        reg.push(tiny_adapter_factory(i), name, domain=name, routing_examples=examples)
        reg.alias_set(name, "prod", 1)
    engine = Engine(tiny_base, registry=reg, settings=lr_home, device="cpu")
    app = create_app(LocalBackend(engine))  # opens Router.open(registry) itself, as `serve` does
    try:
        with BackgroundServer(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0)
            deadline = time.monotonic() + 60
            while httpx.get(srv.url + "/ready").status_code != 200:  # the router is open
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.1)
            assert _routed(client) != "gardening@1"

            pushed = CliRunner().invoke(
                main,
                ["push", str(tiny_adapter_factory(9)), "--name", "gardening", "--json"]
                + [arg for ex in GARDEN for arg in ("--example", ex)],
            )
            assert pushed.exit_code == 0, pushed.output
            assert '"live": false' in pushed.output
            time.sleep(1.5)  # past the router's refresh interval: it has seen the push
            assert _routed(client) != "gardening@1"  # pushed, with examples, but not live

            promoted = CliRunner().invoke(main, ["alias", "set", "gardening", "prod", "1"])
            assert promoted.exit_code == 0 and "(live)" in promoted.output
            while (answered := _routed(client)) != "gardening@1" and time.monotonic() < deadline:
                time.sleep(0.25)
            assert answered == "gardening@1"
    finally:
        engine.close()
