"""Turn chat messages (dicts or LangChain messages) into prompt token ids.

Tool calls and tool results are rendered in the Hermes/Qwen style that ChatML-trained small
models have seen (``<tool_call>{json}</tool_call>``, role ``tool``); a named human message is
prefixed with its name. When the prompt does not fit the context window, the oldest turns
(after any system message) are dropped and the count is reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import ContextLengthError, EmptyConversationError

_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "user": "user",
    "assistant": "assistant",
    "developer": "system",
    "function": "tool",
}


# Content blocks whose information the message carries in other fields (tool_calls).
_CARRIED_ELSEWHERE = {
    "tool_use",
    "tool_call",
    "tool_call_chunk",
    "function_call",
    "reasoning",
    "thinking",
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # LangChain content blocks
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") in _CARRIED_ELSEWHERE:
                continue  # tool calls are rendered from message.tool_calls
            elif isinstance(block, dict):
                raise ValueError(
                    f"content block of type {block.get('type')!r} is not supported by this "
                    f"text-only model; send text blocks only"
                )
        return "".join(parts)
    return "" if content is None else str(content)


def _tool_call_text(calls: Sequence[Any]) -> str:
    out = []
    for call in calls:
        if isinstance(call, dict) and "function" in call:  # OpenAI shape
            fn = call["function"]
            args = fn.get("arguments", {})
            args = json.loads(args) if isinstance(args, str) and args else (args or {})
            name = fn.get("name")
        else:
            name, args = call.get("name"), call.get("args", {})
        out.append(
            "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"
        )
    return "\n".join(out)


def to_chat_dicts(messages: Sequence[Any] | str) -> list[dict[str, str]]:
    """Normalise ``messages`` into ``[{"role", "content"}]`` for a chat template.

    Accepts a string (one user turn), role/content dicts, or LangChain ``BaseMessage`` objects
    (System, Human with ``name``, AI with ``tool_calls``, Tool).
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not messages:
        raise EmptyConversationError("the request has no messages; send at least one user message")
    out: list[dict[str, str]] = []
    msg: Any
    for msg in messages:
        name: str | None
        if isinstance(msg, dict):
            role = _ROLES.get(str(msg.get("role", "user")), str(msg.get("role", "user")))
            content = _text(msg.get("content"))
            calls = msg.get("tool_calls") or []
            name = msg.get("name")
        elif isinstance(msg, (tuple, list)) and len(msg) == 2:
            role, content = str(_ROLES.get(msg[0], msg[0])), _text(msg[1])
            calls, name = [], None
        else:
            mtype = getattr(msg, "type", None)
            if mtype is None:
                raise TypeError(f"cannot read a chat message from {type(msg).__name__}: {msg!r}")
            role = _ROLES.get(mtype, "user")
            if mtype == "chat":
                role = _ROLES.get(getattr(msg, "role", "user"), getattr(msg, "role", "user"))
            content = _text(msg.content)
            calls = getattr(msg, "tool_calls", None) or []
            name = getattr(msg, "name", None)
        if role == "assistant" and calls:
            content = (content + "\n" if content else "") + _tool_call_text(calls)
        elif role == "user" and name:
            content = f"{name}: {content}"
        elif role == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    return out


def render_prompt(
    tokenizer: Any, chat: list[dict[str, str]], *, max_prompt_tokens: int
) -> tuple[list[int], int]:
    """Token ids of ``chat`` with the generation prompt, and how many old turns were dropped.

    Keeps leading system messages and the last message; drops the oldest other turns (and any
    tool results orphaned by that) until the prompt fits ``max_prompt_tokens``.
    """
    system = []
    i = 0
    while i < len(chat) - 1 and chat[i]["role"] == "system":
        system.append(chat[i])
        i += 1
    rest = chat[i:]
    dropped = 0
    while True:
        text = tokenizer.apply_chat_template(
            system + rest, tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            return list(ids), dropped
        if len(rest) <= 1:
            raise ContextLengthError(
                f"the prompt needs {len(ids)} tokens but only {max_prompt_tokens} fit the context "
                f"window after reserving room for the answer, even after dropping {dropped} older "
                f"turn(s); shorten the last message or lower max_tokens"
            )
        rest = rest[1:]
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] == "tool":
            rest = rest[1:]
            dropped += 1
