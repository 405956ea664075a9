"""Checks of free text that reaches SQL or JSON: no NUL, no lone surrogates, no control
characters where a single line is expected, bounded length."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from .errors import InvalidRequestError


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote untrusted input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(text)} chars)"


def _bad_char(text: str, multiline: bool) -> str | None:
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs":
            return f"a lone surrogate (U+{ord(ch):04X})"
        if ch == "\0":
            return "a NUL character"
        if cat == "Cc" and not (multiline and ch in "\n\r\t"):
            return f"a control character (U+{ord(ch):04X})"
    return None


def check_text(value: object, what: str, *, max_chars: int, multiline: bool = False) -> str:
    """Return ``value`` if it is a string fit to store, else raise InvalidRequestError."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidRequestError(
            f"{what} has {len(value)} characters; at most {max_chars} are allowed"
        )
    bad = _bad_char(value, multiline)
    if bad:
        raise InvalidRequestError(f"{what} {shown(value)} contains {bad}; remove it")
    return value


def check_json(value: Any, what: str, depth: int = 0) -> Any:
    """Return ``value`` if every string in it (keys too) can be stored (no NUL, no lone
    surrogate) and every number is finite; else raise InvalidRequestError."""
    if depth > 32:
        raise InvalidRequestError(f"{what} is nested more than 32 levels deep")
    if isinstance(value, str):
        bad = _bad_char(value, multiline=True)
        if bad:
            raise InvalidRequestError(f"{what} contains {bad}; remove it")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{what} holds {value}; only finite numbers are allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_json(k, what, depth + 1)
            check_json(v, f"{what}[{shown(k, 40)}]", depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json(item, what, depth + 1)
    return value
