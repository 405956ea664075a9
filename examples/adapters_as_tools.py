"""Adapters as tools: an orchestrating agent consults expert adapters ("ask the cooking expert").

``adapter_tools`` turns every adapter the registry serves into a LangChain tool. Any chat
model that binds tools can orchestrate them (a hosted model, or ours on the bare base model,
as here); the experts run on the shared base model with their adapters.

Run after ``make demo`` (it uses the adapters the demo pushed):
``python examples/adapters_as_tools.py "How do I stop my tomato leaves turning yellow?"``
"""

from __future__ import annotations

import argparse

from langchain.agents import create_agent

from loraroute.agents import ChatLoraRoute
from loraroute.agents.tools import adapter_tools, tool_first_middleware


def main(argv: list[str] | None = None) -> dict:
    from loraroute.registry import open_registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="How do I keep pasta from sticking?")
    parser.add_argument(
        "--registry", default=None, help="registry URL (default: settings, where the demo pushed)"
    )
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    registry = open_registry(args.registry)
    experts = ChatLoraRoute(registry=registry, base_model=args.base_model)
    tools = adapter_tools(registry=registry, chat=experts, max_tokens=args.max_tokens)
    # The orchestrator writes tool calls (a question for an expert): give it room for one.
    orchestrator = ChatLoraRoute(
        model="base", registry=registry, base_model=args.base_model, max_tokens=128
    )
    agent = create_agent(
        orchestrator,
        tools=tools,
        system_prompt="Answer with the help of the expert best suited to the question.",
        middleware=[tool_first_middleware()],
    )
    state = agent.invoke({"messages": [{"role": "user", "content": args.question}]})
    calls = [c for m in state["messages"] for c in (getattr(m, "tool_calls", None) or [])]
    expert_answers = [m.content for m in state["messages"] if m.type == "tool"]
    for message in state["messages"]:
        extra = f" {message.tool_calls}" if getattr(message, "tool_calls", None) else ""
        print(f"[{message.type}] {message.content}{extra}")
    return {
        "tools": [t.name for t in tools],
        "calls": calls,
        "expert_answer": expert_answers[0] if expert_answers else None,
        "answer": state["messages"][-1].content,
    }


if __name__ == "__main__":
    main()
