"""A LangChain agent (``langchain.agents.create_agent``) on ChatLoraRoute with a real tool.

The 135M-parameter base model cannot be trusted to write valid tool-call JSON on its own;
ChatLoraRoute constrains its generation to the tools' schemas (xgrammar), so every call it
makes parses, and the agent loop runs the tool and lets the model answer from the result.

Run: ``python examples/agent_with_tools.py`` (after ``make demo`` or any ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import ast
import operator

from langchain.agents import create_agent
from langchain_core.tools import tool

from loraroute.agents import ChatLoraRoute
from loraroute.agents.tools import tool_first_middleware

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("only numbers and + - * / ** are allowed")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 * (3 + 4)' and return the number."""
    try:
        return str(_eval(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"


def build_agent(model: str = "base", base_model: str | None = None, max_tokens: int = 64):
    llm = ChatLoraRoute(model=model, base_model=base_model, max_tokens=max_tokens)
    return create_agent(
        llm,
        tools=[calculator],
        system_prompt="You are a careful assistant. Use the calculator for any arithmetic.",
        middleware=[tool_first_middleware()],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 1234 * 5678?")
    parser.add_argument("--base-model", default=None)
    args = parser.parse_args(argv)
    agent = build_agent(base_model=args.base_model)
    state = agent.invoke(
        {"messages": [{"role": "user", "content": args.question}]},
        {"recursion_limit": 8},
    )
    for message in state["messages"]:
        calls = getattr(message, "tool_calls", None)
        print(f"[{message.type}] {message.content}" + (f" {calls}" if calls else ""))
    return state


if __name__ == "__main__":
    main()
