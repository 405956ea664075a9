"""Adapters as LangChain tools: "ask the legal expert", for any orchestrating model.

Each adapter the registry serves (one version per name, under an alias) becomes a tool
``ask_<name>`` that answers a question with that adapter on the shared base model. The
orchestrator can be any LangChain chat model that binds tools (ours with ``model="base"``, or
a hosted one); the experts always run locally.

Example::

    >>> from loraroute.agents.tools import adapter_tools
    >>> tools = adapter_tools(registry=open_registry())  # doctest: +SKIP
    >>> [t.name for t in tools]  # doctest: +SKIP
    ['ask_cooking', 'ask_space']
    >>> tools[0].invoke({"question": "How do I keep pasta from sticking?"})  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from .chat_model import ChatLoraRoute


class _Question(BaseModel):
    question: str = Field(description="The question to put to the expert, in full.")


def _tool_name(name: str) -> str:
    return "ask_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _describe(version: Any) -> str:
    topic = version.description or version.domain or version.name
    return f"Ask the {version.name} expert (a LoRA adapter fine-tuned for: {topic})."


def adapter_tools(
    *,
    registry: Any = None,
    chat: ChatLoraRoute | None = None,
    alias: str | None = None,
    names: list[str] | None = None,
    max_tokens: int = 128,
) -> list[StructuredTool]:
    """One tool per live adapter: the version ``alias`` (default: the serving alias,
    ``prod``) points to (or the names given).

    ``chat`` is the model the experts run on (its engine and registry are shared); by
    default a ``ChatLoraRoute`` on ``registry``. A tool pins its adapter by immutable version
    reference, so re-pointing the alias later does not change a tool already handed out.
    """
    chat = chat or ChatLoraRoute(registry=registry, max_tokens=max_tokens)
    reg = registry if registry is not None else chat._engine().registry
    if isinstance(reg, str):
        from loraroute.registry import open_registry

        reg = open_registry(reg)
    served = {v.name: v for v in reg.serving(alias)}
    if names is not None:
        missing = sorted(set(names) - set(served))
        if missing:
            raise KeyError(
                f"no live adapter named {', '.join(missing)} in the registry (live: a version "
                f"the serving alias points to); it serves: {', '.join(sorted(served)) or 'nothing'}"
            )
        served = {n: served[n] for n in names}
    return [_expert(chat, v, max_tokens) for v in served.values()]


def _expert(chat: ChatLoraRoute, version: Any, max_tokens: int) -> StructuredTool:
    ref = version.ref
    pinned = chat.bind(model=ref, max_tokens=max_tokens)

    def ask(question: str) -> str:
        return str(pinned.invoke(question).content)

    async def aask(question: str) -> str:
        return str((await pinned.ainvoke(question)).content)

    return StructuredTool.from_function(
        func=ask,
        coroutine=aask,
        name=_tool_name(version.name),
        description=_describe(version),
        args_schema=_Question,
        metadata={"adapter_ref": ref, "adapter_digest": version.digest},
    )


def _tool_rounds(messages: list[Any]) -> int:
    """Tool results since the last human turn."""
    rounds = 0
    for message in reversed(messages):
        kind = getattr(message, "type", None)
        if kind == "human":
            break
        if kind == "ai" and getattr(message, "tool_calls", None):
            rounds += 1
    return rounds


def tool_first_middleware(max_rounds: int = 1) -> Any:
    """Agent middleware for small models: call a tool first, then answer from its result.

    A 135M model left to choose (``tool_choice="auto"``) tends to answer from memory. With
    this middleware, ``create_agent`` forces a tool call (``"any"``) on the first model call of
    each human turn and forbids further calls (``"none"``) after ``max_rounds`` tool rounds,
    so the loop always ends in an answer.
    """
    from langchain.agents.middleware import AgentMiddleware

    def choice(request: Any) -> Any:
        if not request.tools:
            return request
        rounds = _tool_rounds(request.messages)
        if rounds == 0:
            return request.override(tool_choice="any")
        if rounds >= max_rounds:
            return request.override(tool_choice="none")
        return request

    class ToolFirst(AgentMiddleware):
        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            return handler(choice(request))

        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            return await handler(choice(request))

    return ToolFirst()


__all__ = ["adapter_tools", "tool_first_middleware"]
