"""One reading of chat messages, shared by the router and the runtime.

A request is a string (one user turn), one message, or a sequence of messages; a message is a
``{"role", "content", ...}`` dict (OpenAI shape, with ``name``/``tool_calls``), a ``(role,
content)`` pair, or a LangChain ``BaseMessage`` (read by duck typing, so langchain is not
imported here). Roles are normalised to ``system``, ``user``, ``assistant`` and ``tool``
(OpenAI's ``developer`` is a system message, ``function`` a tool result); content is text, or
text blocks joined as LangChain's ``.text`` joins them (with nothing between).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidMessagesError

Role = Literal["system", "user", "assistant", "tool"]

ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
}

# Content blocks whose information the message carries in other fields (``tool_calls``) or
# that a text model does not read back (reasoning).
_CARRIED_ELSEWHERE = frozenset(
    {"tool_use", "tool_call", "tool_call_chunk", "function_call", "reasoning", "thinking"}
)


@dataclass(frozen=True)
class Message:
    """One normalised chat message; ``tool_calls`` are ``{"name", "arguments": dict}``."""

    role: Role
    text: str
    name: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = field(default=())


def content_text(content: Any) -> str:
    """The text of a message's content: a string, ``None``, or a list of text blocks."""
    if isinstance(content, str):
        return _unicode(content)
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") in _CARRIED_ELSEWHERE:
                continue
            else:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise InvalidMessagesError(
                    f"content block of type {kind!r} is not supported: the models served here "
                    f"read text only; send text blocks"
                )
        return _unicode("".join(parts))
    raise InvalidMessagesError(
        f"message content must be a string or a list of text blocks, got {type(content).__name__}"
    )


def _unicode(text: str) -> str:
    """``text`` if it is valid Unicode (no lone surrogate, which no tokenizer can encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessagesError(
            f"message text holds a lone surrogate at character {exc.start} "
            f"({text[exc.start]!r}), which is not valid Unicode; send UTF-8 text"
        ) from None
    return text


def _tool_call(call: Any) -> dict[str, Any]:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):  # OpenAI shape
        fn = call["function"]
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                raise InvalidMessagesError(
                    f"tool call arguments must be a JSON object string, got {args[:80]!r}"
                ) from exc
        return {"name": fn.get("name"), "arguments": args or {}}
    if isinstance(call, dict):  # LangChain ToolCall
        return {"name": call.get("name"), "arguments": call.get("args") or {}}
    raise InvalidMessagesError(f"a tool call must be a dict, got {type(call).__name__}")


def _role(value: Any, index: int) -> Role:
    role = ROLES.get(str(value))
    if role is None:
        raise InvalidMessagesError(
            f"message {index} has role {value!r}; allowed: {', '.join(sorted(ROLES))}"
        )
    return role


def normalise(request: str | Any | Sequence[Any]) -> list[Message]:
    """``request`` as a list of :class:`Message` (may be empty for an empty sequence).

    Example::

        >>> normalise([{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}])
        [Message(role='system', text='Be brief.', name=None, tool_calls=())]
    """
    if isinstance(request, str):
        return [Message("user", request)]
    if isinstance(request, dict) or hasattr(request, "content"):
        request = [request]
    if not isinstance(request, Sequence):
        raise InvalidMessagesError(
            f"a request is a string or a list of messages, got {type(request).__name__}"
        )
    out = []
    for i, msg in enumerate(request):
        calls: Any = ()
        name = None
        role: Role
        if isinstance(msg, str):
            role, text = "user", content_text(msg)
        elif isinstance(msg, dict):
            role = _role(msg.get("role", "user"), i)
            text = content_text(msg.get("content"))
            calls, name = msg.get("tool_calls") or (), msg.get("name")
        elif isinstance(msg, (tuple, list)) and len(msg) == 2:
            role, text = _role(msg[0], i), content_text(msg[1])
        elif hasattr(msg, "type") and hasattr(msg, "content"):  # a LangChain message
            kind = str(msg.type)
            role = _role(getattr(msg, "role", "user") if kind == "chat" else kind, i)
            text = content_text(msg.content)
            calls, name = getattr(msg, "tool_calls", None) or (), getattr(msg, "name", None)
        else:
            raise InvalidMessagesError(
                f"message {i} is a {type(msg).__name__}; expected a dict with role and content, "
                f"a (role, content) pair or a LangChain message"
            )
        tool_calls = tuple(_tool_call(c) for c in calls) if role == "assistant" else ()
        out.append(Message(role, text, name if isinstance(name, str) else None, tool_calls))
    return out


def user_turns(request: str | Any | Sequence[Any]) -> list[str]:
    """The texts of the user turns of ``request``, oldest first (may be empty)."""
    return [m.text for m in normalise(request) if m.role == "user"]
