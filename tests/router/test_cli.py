"""``adapters route``: text routing and subcommands coexisting, fit/eval/list, on a real registry."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from loraroute.cli import main

LEGAL = [
    "is this contract clause enforceable",
    "what does the indemnity clause cover",
    "can my landlord terminate the lease",
]
MATH = [
    "solve the equation 2x plus 3 equals 7",
    "what is the derivative of x squared",
    "compute the integral of sin x",
]


@pytest.fixture
def registry_url(lr_home, tiny_adapter_factory):
    from loraroute.registry import open_registry

    url = f"sqlite:///{lr_home.home / 'reg.db'}"
    reg = open_registry(url, settings=lr_home)
    reg.push(tiny_adapter_factory(1), "legal", domain="legal", routing_examples=LEGAL)
    reg.push(tiny_adapter_factory(2), "math", domain="math", routing_examples=MATH)
    reg.push(tiny_adapter_factory(3), "noexamples", domain="misc")
    for name in ("legal", "math", "noexamples"):
        reg.alias_set(name, "prod", 1)
    return url


def run(*args: str):
    return CliRunner().invoke(main, ["route", *args], catch_exceptions=False)


def test_route_text_and_subcommands_coexist(registry_url, tmp_path):
    common = ["--registry", registry_url, "--encoder", "hashing"]
    res = run("solve the equation 5x equals 10", "--json", *common)
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["adapter"] == "math" and d["ref"] == "math@1" and d["digest"].startswith("sha256:")
    res = run("solve the equation", *common)
    assert res.exit_code == 0 and res.output.startswith("math (math@1)")
    res = run("list", "--json", *common)
    rows = {r["name"]: r for r in json.loads(res.output)["routes"]}
    assert rows["noexamples"]["routable"] is False and rows["legal"]["examples"] == 3

    data = tmp_path / "fit.jsonl"
    lines = [
        {"text": "is the lease clause enforceable", "label": "legal"},
        {"text": "solve x plus 1 equals 2", "label": "math"},
        {"text": "book me a flight to paris", "label": None},
        {"text": "what time is it", "label": None},
    ]
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    state = tmp_path / "state"
    res = run("fit", str(data), "--state", str(state), "--json", *common)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["out_of_scope"] == 2 and (state / "state.json").is_file()
    res = run(
        "eval",
        str(data),
        "--state",
        str(state),
        "--json",
        "--plot",
        str(tmp_path / "p.png"),
        *common,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert set(report) >= {"accuracy", "abstention_precision", "abstention_recall", "per_route"}
    assert (tmp_path / "p.png").stat().st_size > 0
    res = run("eval", str(data), "--state", str(state), *common)
    assert res.exit_code == 0 and "abstention" in res.output


def test_default_state_under_home(registry_url, tmp_path, lr_home):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps(
            {
                "domain": "legal",
                "messages": [
                    {"role": "user", "content": "is the indemnity enforceable"},
                    {"role": "assistant", "content": "it depends"},
                ],
            }
        )
        + "\n"
    )
    res = run("fit", str(data), "--registry", registry_url, "--encoder", "hashing")
    assert res.exit_code == 0, res.output
    assert (lr_home.home / "router" / "prod" / "state.json").is_file()


def test_bad_data_is_a_clean_error(registry_url, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    res = CliRunner().invoke(
        main, ["route", "fit", str(bad), "--registry", registry_url, "--encoder", "hashing"]
    )
    assert res.exit_code != 0 and "neither 'text' nor 'messages'" in res.output


def test_router_open_uses_saved_state(registry_url, tmp_path, lr_home):
    from loraroute.router import Router

    assert not Router.open(registry_url, encoder="hashing").fitted
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"text": "solve x plus 1 equals 2", "label": "math"}\n'
        '{"text": "book a flight", "label": null}\n'
    )
    assert run("fit", str(data), "--registry", registry_url, "--encoder", "hashing").exit_code == 0
    assert Router.open(registry_url, encoder="hashing").fitted


def test_read_labelled_formats(tmp_path):
    from loraroute.router.data import read_labelled
    from loraroute.router.errors import RouteDataError

    f = tmp_path / "a.jsonl"
    f.write_text(
        '{"text": "hi", "label": null}\n\n{"text": "x", "label": "math"}\n'
        '{"domain": "legal", "messages": [{"role": "system", "content": "s"},'
        ' {"role": "user", "content": "q"}]}\n'
    )
    assert read_labelled(f) == (["hi", "x", "q"], [None, "math", "legal"])
    f.write_text("not json\n")
    with pytest.raises(RouteDataError, match="a.jsonl:1"):
        read_labelled(f)
