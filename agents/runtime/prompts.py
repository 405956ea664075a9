"""Turn chat messages into prompt token ids for the base model's chat template.

Messages are read by :func:`loraroute.messages.normalise` (the router reads them the same way).
Tool calls and tool results are rendered in the Hermes/Qwen style that ChatML-trained small
models have seen (``<tool_call>{json}</tool_call>``, role ``tool``); a named user message is
prefixed with its name. When the prompt does not fit the context window, the oldest turns
(after any system message) are dropped and the count is reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from loraroute.messages import normalise

from ..errors import ContextLengthError, EmptyConversationError


def to_chat_dicts(messages: Sequence[Any] | str) -> list[dict[str, str]]:
    """``messages`` as ``[{"role", "content"}]`` for a chat template.

    Accepts what :func:`loraroute.messages.normalise` reads: a string (one user turn),
    role/content dicts, ``(role, content)`` pairs or LangChain messages.
    """
    normalised = normalise(messages)
    if not normalised:
        raise EmptyConversationError("the request has no messages; send at least one user message")
    out: list[dict[str, str]] = []
    for m in normalised:
        content = m.text
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join(
                "<tool_call>\n"
                + json.dumps({"name": c["name"], "arguments": c["arguments"]})
                + "\n</tool_call>"
                for c in m.tool_calls
            )
            content = (content + "\n" if content else "") + calls
        elif m.role == "user" and m.name:
            content = f"{m.name}: {content}"
        elif m.role == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": m.role, "content": content})
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
