"""Requests as the router reads them: a string, or a conversation of messages.

Messages are dicts ``{"role": ..., "content": ...}`` or LangChain ``BaseMessage`` objects
(read by duck typing, so langchain is not imported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidRequestError

_LC_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "chat": "user",
}
_ROLES = {"user", "assistant", "system", "tool", "developer"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal blocks: keep the text parts
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "\n".join(parts)
    if content is None:
        return ""
    raise InvalidRequestError(
        f"message content must be a string or a list of text blocks, got {type(content).__name__}"
    )


def normalise_messages(request: str | Sequence[Any]) -> list[tuple[str, str]]:
    """``[(role, text), ...]``; a bare string is one user turn.

    Example::

        >>> normalise_messages("hi")
        [('user', 'hi')]
    """
    if isinstance(request, str):
        return [("user", request)]
    if isinstance(request, dict):
        request = [request]
    if not isinstance(request, Sequence):
        raise InvalidRequestError(
            f"a request is a string or a list of messages, got {type(request).__name__}"
        )
    out: list[tuple[str, str]] = []
    for i, msg in enumerate(request):
        if isinstance(msg, dict):
            role = str(msg.get("role", ""))
            content = msg.get("content")
        elif hasattr(msg, "type") and hasattr(msg, "content"):
            role = _LC_ROLES.get(str(msg.type), str(msg.type))
            content = msg.content
        elif isinstance(msg, str):
            role, content = "user", msg
        else:
            raise InvalidRequestError(
                f"message {i} is a {type(msg).__name__}; expected a dict with role and content "
                f"or a LangChain message"
            )
        if role not in _ROLES:
            raise InvalidRequestError(
                f"message {i} has role {role!r}; allowed: {', '.join(sorted(_ROLES))}"
            )
        out.append((role, _content_text(content)))
    return out


def user_turns(request: str | Sequence[Any]) -> list[str]:
    """The user turns of a request, oldest first (may be empty)."""
    return [text for role, text in normalise_messages(request) if role == "user"]
