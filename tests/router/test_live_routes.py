"""The router's routes are the live versions (the serving alias), and what it warns about is
said once, with what to do."""

from __future__ import annotations

import logging

import pytest

from loraroute.router import Router

LEGAL = ["is this contract clause enforceable?", "what does indemnify mean in a lease"]
MATH = ["solve 2x + 3 = 7 for x", "what is the derivative of x squared"]


@pytest.fixture
def reg(lr_home, tiny_adapter_factory):
    from loraroute.registry import open_registry

    r = open_registry(settings=lr_home)
    r.push(tiny_adapter_factory(1), "legal", routing_examples=LEGAL)
    r.push(tiny_adapter_factory(2), "bare")  # no routing examples
    for name in ("legal", "bare"):
        r.alias_set(name, "prod", 1)
    return r


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_unroutable_is_said_once_and_plain_pushes_change_nothing(reg, tiny_adapter_factory, caplog):
    caplog.set_level(logging.WARNING, logger="loraroute.router")
    router = Router(reg, encoder="hashing", refresh_interval=0)
    (said,) = _warnings(caplog, "no routing examples")
    assert "bare@1" in said and "--example" in said and "--alias prod" in said
    assert router.route("solve 4x = 8").adapter in (None, "legal")
    embedded = router.encoder.embedded  # routing examples and that request
    for seed in (3, 4):  # versions nobody promoted: the live routes stay the same
        reg.push(tiny_adapter_factory(seed), "bare")
        reg.push(tiny_adapter_factory(seed + 10), "math", routing_examples=MATH)
        assert router.route("solve 4x = 8").adapter in (None, "legal")
    assert router.encoder.embedded == embedded and len(_warnings(caplog, "no routing")) == 1
    reg.alias_set("math", "prod", 1)
    assert router.route("solve 4x = 8 for x").adapter == "math"


def test_the_serving_alias_is_a_setting(lr_home, reg, monkeypatch):
    reg.alias_set("legal", "canary", 1)
    monkeypatch.setenv("LORAROUTE_SERVING_ALIAS", "canary")
    from loraroute.settings import get_settings

    settings = get_settings()
    assert settings.serving_alias == "canary"
    router = Router(reg, encoder="hashing", settings=settings)
    assert router.alias == "canary" and [r.name for r in router.routes + router.unroutable] == [
        "legal"
    ]
    assert [v.ref for v in reg.serving("canary")] == ["legal@1"]
    monkeypatch.setenv("LORAROUTE_SERVING_ALIAS", "not an alias")
    with pytest.raises(ValueError, match="serving_alias"):
        get_settings()


def test_a_stale_state_is_refitted_saved_and_reported_once(
    reg, lr_home, tiny_adapter_factory, caplog
):
    state = lr_home.home / "router" / "prod"
    router = Router(reg, encoder="hashing")
    router.fit(["is my lease enforceable", "bake bread", "solve x + 1 = 2"], ["legal", None, None])
    router.save(state)
    reg.push(tiny_adapter_factory(5), "math", routing_examples=MATH)
    reg.alias_set("math", "prod", 1)  # the live routes changed since the fit

    caplog.set_level(logging.WARNING, logger="loraroute.router")
    opened = Router.open(reg, encoder="hashing", settings=lr_home)
    (said,) = _warnings(caplog, "re-fitted")
    assert "saved it" in said and "adapters route fit DATA" in said
    assert {r.name for r in opened.routes} == {"legal", "math"}
    caplog.clear()
    again = Router.open(reg, encoder="hashing", settings=lr_home)
    assert _warnings(caplog, "re-fitted") == [] and again.fitted
