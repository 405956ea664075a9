"""The whole stack on SmolLM2: registry + router + ChatLoraRoute, alias pinning and routing."""

from __future__ import annotations

import pytest

from loraroute.router import Router
from loraroute.testing import make_random_lora

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(smollm2_on_registry, tmp_path):
    from loraroute.agents.chat_model import ChatLoraRoute

    reg, engine = smollm2_on_registry
    base = engine.base_path
    legal = make_random_lora(base, tmp_path / "legal", seed=1)
    maths = make_random_lora(base, tmp_path / "math", seed=2)
    v_legal = reg.push(
        legal,
        "legal",
        domain="law",
        base_fingerprint=engine.base_fingerprint,
        routing_examples=[
            "Is this NDA clause enforceable?",
            "Draft a contract clause",
            "What does the liability clause in my lease mean?",
        ],
    )
    v_math = reg.push(
        maths,
        "math",
        domain="math",
        base_fingerprint=engine.base_fingerprint,
        routing_examples=[
            "Solve for x: 2x + 3 = 7",
            "What is the derivative of x^2?",
            "Compute 17 * 23",
            "Solve the equation 5x - 2 = 13",
            "Find z if 4z + 1 = 9",
        ],
    )
    reg.alias_set("legal", "prod", 1)
    reg.alias_set("math", "prod", 1)  # live: model="auto" routes to promoted versions only
    llm = ChatLoraRoute(engine=engine, registry=reg, router=Router(reg), max_tokens=8)
    yield llm, v_legal, v_math


def test_routes_each_call_and_pins_by_alias(stack):
    llm, v_legal, v_math = stack
    legal = llm.invoke("Is the non-compete clause in my employment contract enforceable?")
    assert legal.response_metadata["adapter_ref"] == v_legal.ref
    assert legal.response_metadata["adapter_digest"] == v_legal.digest
    assert legal.response_metadata["route_confidence"] is not None
    maths = llm.invoke("Solve for y: 3y - 4 = 11")
    assert maths.response_metadata["adapter_ref"] == v_math.ref
    pinned = llm.invoke("Solve for y: 3y - 4 = 11", model="legal:prod")
    assert pinned.response_metadata["adapter_ref"] == v_legal.ref
    assert pinned.response_metadata["model_name"] == "legal:prod"
