"""Constrained decoding for tool calls, JSON output, regular expressions, fixed choices and
grammars (vLLM's ``guided_*`` parameters), with xgrammar.

xgrammar compiles a tool schema in milliseconds and masks a step in well under one on CPU;
lm-format-enforcer does not import with transformers 5, and outlines pulls a much larger stack.

Tool calls use the Hermes/Qwen format that :mod:`.prompts` renders into history
(``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``); xgrammar's ``qwen_3``
structural tag lets free text run until ``<tool_call>`` and then forces the JSON of one of the
tools.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from typing import Any

from ..errors import ToolSchemaError

logger = logging.getLogger(__name__)

_INSTALL = "pip install xgrammar"
# Small models otherwise loop on whitespace inside JSON, which the grammar allows.
MAX_WHITESPACE = 2
_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)

TOOLS_PROMPT = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _xgr() -> Any:
    try:
        import xgrammar
    except ImportError as exc:
        raise ImportError(f"tool calling and structured output need xgrammar: {_INSTALL}") from exc
    return xgrammar


def normalize_tool_choice(tool_choice: Any, tools: list[dict]) -> str | dict:
    """LangChain's tool_choice values -> OpenAI's ("auto", "required", "none", or a named tool)."""
    names = [t["function"]["name"] for t in tools]
    if tool_choice in (None, "auto"):
        return "auto"
    if tool_choice in ("any", "required", True):
        if len(names) == 1:  # one tool: force it outright, no free text first
            return {"type": "function", "function": {"name": names[0]}}
        return "required"
    if tool_choice in ("none", False):
        return "none"
    if isinstance(tool_choice, str):
        tool_choice = {"type": "function", "function": {"name": tool_choice}}
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if name not in names:
            raise ToolSchemaError(
                f"tool_choice names {name!r}, which is not among the bound tools ({', '.join(names)})"
            )
        return {"type": "function", "function": {"name": name}}
    raise ToolSchemaError(
        f"tool_choice {tool_choice!r} is not supported; use 'auto', 'any', 'none' or a tool name"
    )


def tool_grammar_spec(tools: list[dict], tool_choice: str | dict) -> dict:
    """A JSON-able description of the constraint (also the cache key of its compiled form)."""
    return {"kind": "tools", "tools": tools, "tool_choice": tool_choice}


def _structural_tag(spec: dict) -> Any:
    xgr = _xgr()
    if spec["kind"] == "tools":
        return xgr.get_builtin_structural_tag(
            "qwen_3",
            tools=spec["tools"],
            tool_choice=spec["tool_choice"],
            reasoning="disabled",
            parallel_tool_calls=False,
            max_whitespace_cnt=MAX_WHITESPACE,
        )
    raise ValueError(f"unknown constraint kind {spec['kind']!r}")


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose only sentences are ``choices`` (vLLM's ``guided_choice``)."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a non-empty list of non-empty strings")
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _grammar(spec: dict) -> Any:
    """The xgrammar ``Grammar`` of a ``regex``, ``choice`` or ``grammar`` spec (an EBNF grammar,
    or a Lark one, as vLLM's ``guided_grammar`` accepts)."""
    xgr = _xgr()
    kind = spec["kind"]
    if kind == "regex":
        return xgr.Grammar.from_regex(spec["regex"])
    if kind == "choice":
        return xgr.Grammar.from_ebnf(choice_grammar(spec["choices"]))
    if kind == "grammar":
        try:
            return xgr.Grammar.from_ebnf(spec["grammar"])
        except RuntimeError as ebnf_error:
            try:
                return xgr.Grammar.from_lark(spec["grammar"])
            except (RuntimeError, ValueError):
                raise ebnf_error from None
    raise ValueError(f"unknown constraint kind {kind!r}")


_DESCRIBE = {
    "json_schema": "the JSON schema",
    "regex": "the regular expression",
    "choice": "the choices",
    "grammar": "the grammar",
}


def validate(spec: dict) -> None:
    """Compile ``spec`` without a tokenizer; raise :class:`ToolSchemaError` if it cannot be."""
    xgr = _xgr()
    try:
        if spec["kind"] == "json_schema":
            xgr.Grammar.from_json_schema(
                json.dumps(spec["schema"]), max_whitespace_cnt=MAX_WHITESPACE
            )
        elif spec["kind"] == "tools":
            xgr.Grammar.from_structural_tag(_structural_tag(spec))
        else:
            _grammar(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        names = [t["function"]["name"] for t in spec.get("tools", [])]
        what = f"tools {', '.join(names)}" if names else _DESCRIBE.get(spec["kind"], "it")
        raise ToolSchemaError(
            f"cannot compile {what} into a generation constraint: {exc}; simplify it "
            f"(plain JSON-schema types and no external $ref; xgrammar's regex and EBNF syntax)"
        ) from exc


class GrammarCompiler:
    """Compiles constraint specs for one tokenizer, with a cache keyed by the spec's JSON."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]):
        xgr = _xgr()
        self._info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(self._info)
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.vocab_size = vocab_size

    def compile(self, spec: dict) -> Any:
        key = json.dumps(spec, sort_keys=True)
        with self._lock:
            compiled = self._cache.get(key)
        if compiled is not None:
            return compiled
        validate(spec)
        if spec["kind"] == "json_schema":
            compiled = self._compiler.compile_json_schema(
                json.dumps(spec["schema"]), max_whitespace_cnt=MAX_WHITESPACE
            )
        elif spec["kind"] == "tools":
            compiled = self._compiler.compile_structural_tag(_structural_tag(spec))
        else:
            compiled = self._compiler.compile_grammar(_grammar(spec))
        with self._lock:
            self._cache[key] = compiled
        return compiled

    def constraint(self, spec: dict) -> TokenConstraint:
        return TokenConstraint(self.compile(spec), self.vocab_size)


class TokenConstraint:
    """Per-request matcher: masks logits to the grammar and follows accepted tokens."""

    def __init__(self, compiled: Any, vocab_size: int):
        xgr = _xgr()
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: Any) -> Any:
        """Return ``logits`` (1-D, float) with disallowed tokens set to -inf."""
        row = logits.detach().to("cpu", copy=True).unsqueeze(0)
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(row, self.bitmask)
        return row[0].to(logits.device)

    def accept(self, token: int) -> bool:
        return bool(self.matcher.accept_token(token))

    def jump_forward(self, limit: int) -> list[int]:
        """Accept and return the tokens the grammar forces from here (at most ``limit``).

        They are fed to the model in the same forward as the prompt, so e.g. the fixed
        ``<tool_call>\n{"name": "f", "arguments": `` of a forced call costs no decode steps.
        """
        tokens = []
        for token in self.matcher.find_jump_forward_tokens()[: max(limit, 0)]:
            if not self.matcher.accept_token(token):
                break
            tokens.append(int(token))
        return tokens

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())


def tools_system_prompt(tools: list[dict]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))


def parse_tool_calls(text: str) -> tuple[str, list[dict], list[dict]]:
    """Split model text into (remaining content, tool_calls, invalid_tool_calls)."""
    calls: list[dict] = []
    invalid: list[dict] = []
    for match in _CALL_RE.finditer(text):
        raw = match.group(1)
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        try:
            data = json.loads(raw)
            name, args = data["name"], data.get("arguments", {})
            if not isinstance(args, dict):
                raise TypeError("arguments is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            invalid.append(
                {
                    "type": "invalid_tool_call",
                    "id": call_id,
                    "name": None,
                    "args": raw,
                    "error": str(exc),
                }
            )
            continue
        calls.append({"type": "tool_call", "id": call_id, "name": name, "args": args})
    content = _CALL_RE.sub("", text).strip() if (calls or invalid) else text
    start = content.find("<tool_call>")
    if start >= 0:  # a call cut short (max_tokens reached before it closed)
        invalid.append(
            {
                "type": "invalid_tool_call",
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "name": None,
                "args": content[start + len("<tool_call>") :].strip(),
                "error": "the tool call was cut off before it was complete; raise max_tokens",
            }
        )
        content = content[:start].strip()
    return content, calls, invalid
