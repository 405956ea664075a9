"""Fixtures of the agents' tests: the real SmolLM2 engine over a test registry."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2_settings():
    """Settings whose home holds the converted SmolLM2 and its cached fingerprint (converted
    once per machine); registries stay in each test's own ``LORAROUTE_HOME``."""
    from loraroute.settings import Settings, default_home

    return Settings(home=default_home())


@pytest.fixture
def smollm2_on_registry(lr_home, smollm2_settings):
    """``(registry, engine)``: an empty registry in the test's home and the real SmolLM2
    engine (CPU) that loads adapters from it."""
    from loraroute.agents.runtime import Engine
    from loraroute.registry import open_registry

    reg = open_registry(settings=lr_home)
    engine = Engine(None, registry=reg, settings=smollm2_settings, device="cpu")
    yield reg, engine
    engine.close()
