"""Every script in examples/ runs here, as a user would run it (its ``main``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    """Import an example script as a module (as ``python examples/x.py`` would run it)."""
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # typing.get_type_hints (LangGraph) looks modules up here
    spec.loader.exec_module(module)
    return module


def push_experts(url: str, settings, cooking: Path, space: Path) -> str:
    """A registry with a cooking and a space adapter, each with routing examples."""
    from loraroute.registry import open_registry

    reg = open_registry(url, settings=settings)
    reg.push(
        cooking,
        "cooking",
        domain="cooking",
        description="recipes and kitchen technique",
        routing_examples=[
            "how long should I boil pasta",
            "how do I keep pasta from sticking together",
            "what temperature do I roast chicken at",
            "how do I make pancakes fluffy",
        ],
    )
    reg.push(
        space,
        "space",
        domain="astronomy",
        routing_examples=[
            "why is mars red",
            "how far away is the moon",
            "what is a black hole",
            "when can I see jupiter in the night sky",
        ],
    )
    for name in ("cooking", "space"):  # live: the router serves promoted versions only
        reg.alias_set(name, "prod", 1)
    return url


@pytest.fixture
def cooking_registry(lr_home, tiny_adapter_factory):
    url = f"sqlite:///{lr_home.home / 'examples.db'}"
    return push_experts(url, lr_home, tiny_adapter_factory(1), tiny_adapter_factory(2))


@pytest.fixture
def smollm2_registry(lr_home, smollm2_path, tmp_path):
    """Two adapters shaped for SmolLM2 (small random weights: the answers stay fluent)."""
    from loraroute.testing import make_tiny_adapter

    folders = [
        make_tiny_adapter(smollm2_path, tmp_path / name, seed=i, scale=0.01)
        for i, name in enumerate(("cooking", "space"))
    ]
    return push_experts(f"sqlite:///{lr_home.home / 'examples.db'}", lr_home, *folders)


@pytest.mark.slow
def test_agent_example_calls_the_tool_and_answers_from_it():
    state = load("agent_with_tools.py").main(["What is 1234 * 5678?"])
    kinds = [m.type for m in state["messages"]]
    assert kinds[:3] == ["human", "ai", "tool"] and kinds[-1] == "ai"
    assert state["messages"][1].tool_calls[0]["name"] == "calculator"
    assert state["messages"][2].content == "7006652"
    assert not state["messages"][-1].tool_calls and state["messages"][-1].content


def test_langgraph_example_routes_to_an_expert_or_the_base(cooking_registry, tiny_base):
    results = load("langgraph_routing.py").main(
        [
            "--registry",
            cooking_registry,
            "--base-model",
            str(tiny_base),
            "--max-tokens",
            "4",
            "How do I keep pasta from sticking?",
            "Which year did the Berlin wall fall?",
        ]
    )
    assert results[0]["adapter"].startswith("cooking")
    assert results[1]["adapter"] is None
    assert all(isinstance(r["answer"], str) for r in results)


@pytest.mark.slow
def test_adapters_as_tools_example(smollm2_registry):
    out = load("adapters_as_tools.py").main(
        ["--registry", smollm2_registry, "--max-tokens", "24", "How long do I boil pasta?"]
    )
    assert set(out["tools"]) == {"ask_cooking", "ask_space"}
    assert out["calls"] and out["calls"][0]["name"] in out["tools"]
    assert isinstance(out["expert_answer"], str)
