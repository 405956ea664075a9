"""A LangGraph graph with a routing node: the router picks an expert adapter or the base model.

    route ──(adapter chosen)──> expert ──> END
      └────(nothing fits)────> generalist ──> END

The routing node writes its decision (adapter reference, confidence) into the graph state,
so later nodes, logs and checkpoints see why an answer came from where it did.

Run after ``make demo`` (it uses the adapters and router the demo left):
``python examples/langgraph_routing.py "How do I keep pasta from sticking?"``
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from loraroute.agents import ChatLoraRoute
from loraroute.router import Router


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    adapter: str | None
    confidence: float


def build_graph(chat: ChatLoraRoute, router: Router) -> Any:
    def route(state: State) -> dict:
        decision = router.route(state["messages"])
        return {"adapter": decision.ref, "confidence": float(decision.confidence)}

    def expert(state: State) -> dict:
        return {"messages": [chat.invoke(state["messages"], model=state["adapter"])]}

    def generalist(state: State) -> dict:
        return {"messages": [chat.invoke(state["messages"], model="base")]}

    graph = StateGraph(State)
    graph.add_node("route", route)
    graph.add_node("expert", expert)
    graph.add_node("generalist", generalist)
    graph.add_edge(START, "route")
    graph.add_conditional_edges(
        "route", lambda s: "expert" if s["adapter"] else "generalist", ["expert", "generalist"]
    )
    graph.add_edge("expert", END)
    graph.add_edge("generalist", END)
    return graph.compile()


def main(argv: list[str] | None = None) -> list[dict]:
    from loraroute.registry import open_registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "questions",
        nargs="*",
        default=[
            "How do I keep pasta from sticking together?",
            "Who painted the Mona Lisa?",
        ],
    )
    parser.add_argument(
        "--registry", default=None, help="registry URL (default: settings, where the demo pushed)"
    )
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    registry = open_registry(args.registry)
    router = Router.open(registry)
    chat = ChatLoraRoute(registry=registry, base_model=args.base_model, max_tokens=args.max_tokens)
    app = build_graph(chat, router)
    results = []
    for question in args.questions:
        state = app.invoke({"messages": [HumanMessage(question)]})
        answer = state["messages"][-1]
        who = state["adapter"] or "base"
        print(f"{question}\n  -> {who} ({state['confidence']:.2f}): {answer.content}")
        results.append(
            {"question": question, "adapter": state["adapter"], "answer": answer.content}
        )
    return results


if __name__ == "__main__":
    main()
