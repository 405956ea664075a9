"""Chat training data: load JSONL, validate, normalise, digest, and sample routing examples.

One record a line: ``{"messages": [{"role": ..., "content": ...}, ...]}``; other keys (``id``,
``domain``, ``source``) are allowed and ignored. Problems are collected for the whole file and
raised together, each with its line number, so a user fixes them in one pass.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataValidationError

ROLES = ("system", "user", "assistant", "tool")
_SHOW_PER_KIND = 5  # line numbers shown per kind of problem in the error message


@dataclass(frozen=True)
class ChatExample:
    """One validated conversation; ``line`` is its 1-based line in the file (or list index + 1)."""

    messages: tuple[tuple[str, str], ...]
    line: int

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def first_user_turn(self) -> str | None:
        return next((c for r, c in self.messages if r == "user"), None)


def _check_record(obj: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Return ``(messages, problems)``; problems are ``(kind, detail)``."""
    if not isinstance(obj, dict):
        return [], [("not an object", f"expected a JSON object, got {type(obj).__name__}")]
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return [], [("no messages", "'messages' must be a non-empty list")]
    out: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            problems.append(("bad message", f"message {i} is not an object"))
            continue
        role, content = msg.get("role"), msg.get("content")
        if role is None:
            problems.append(("missing role", f"message {i} has no 'role'"))
            continue
        if role not in ROLES:
            problems.append(
                ("unknown role", f"message {i} has role {role!r}; allowed: {', '.join(ROLES)}")
            )
            continue
        if not isinstance(content, str):
            problems.append(("bad content", f"message {i} ({role}) has no string 'content'"))
            continue
        if role == "assistant" and not content.strip():
            problems.append(("empty assistant turn", f"message {i} is an empty assistant turn"))
            continue
        out.append((role, content))
    if not problems:
        roles = {r for r, _ in out}
        if "assistant" not in roles:
            problems.append(("no assistant turn", "no assistant message to learn from"))
        if "user" not in roles:
            problems.append(("no user turn", "no user message"))
    return out, problems


def _error_message(
    source: str, issues: list[tuple[int, str, str]], total: int, what: str = "training data"
) -> str:
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for line, kind, detail in issues:
        by_kind.setdefault(kind, []).append((line, detail))
    parts = []
    for kind, items in by_kind.items():
        shown = "; ".join(f"line {line}: {detail}" for line, detail in items[:_SHOW_PER_KIND])
        more = f"; and {len(items) - _SHOW_PER_KIND} more" if len(items) > _SHOW_PER_KIND else ""
        parts.append(f"{kind}: {len(items)} ({shown}{more})")
    bad = len({line for line, _, _ in issues})
    return (
        f"{what} {source} has {bad} invalid record(s) out of {total}: "
        + " | ".join(parts)
        + ". Fix or remove these lines; each line must be "
        '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'
    )


def read_records(
    data: Path | str | Iterable[dict[str, Any]], *, what: str = "training data"
) -> tuple[str, list[tuple[int, Any]], list[tuple[int, str, str]]]:
    """``(source, [(line, object)], issues)`` for a JSONL file or a list of records.

    Lines end at ``"\n"`` only; blank lines are skipped; a line that is not JSON becomes an
    issue ``(line, "malformed JSON", detail)``. A missing or non-UTF-8 file raises at once.
    """
    issues: list[tuple[int, str, str]] = []
    if not isinstance(data, (str, Path)):
        return "(list of records)", list(enumerate(data, start=1)), issues
    path = Path(data)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataValidationError(f"{what} file {str(path)!r} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{what} file {str(path)!r} is not UTF-8 text ({exc}); save it as UTF-8 JSONL"
        ) from exc
    records: list[tuple[int, Any]] = []
    # JSONL lines end at "\n" only: str.splitlines() would also split at U+2028/U+2029,
    # which JSON strings may hold unescaped (PubMedQA does).
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            records.append((n, json.loads(raw)))
        except json.JSONDecodeError as exc:
            issues.append((n, "malformed JSON", exc.msg + f" at column {exc.colno}"))
            records.append((n, _MALFORMED))
    return repr(str(path)), records, issues


_MALFORMED = object()  # placeholder for a line that is not JSON (already an issue)


def load_examples(data: Path | str | Iterable[dict[str, Any]]) -> list[ChatExample]:
    """Read and validate chat records from a JSONL file or a list of dicts.

    Raises :class:`DataValidationError` listing every malformed line (JSON errors, missing or
    unknown roles, no assistant turn, empty assistant turns). Blank lines are skipped.

    Example::

        >>> load_examples([{"messages": [{"role": "user", "content": "hi"},
        ...                              {"role": "assistant", "content": "hello"}]}])[0].line
        1
    """
    source, records, issues = read_records(data)
    examples: list[ChatExample] = []
    for line, obj in records:
        if obj is _MALFORMED:
            continue
        msgs, problems = _check_record(obj)
        if problems:
            issues.extend((line, kind, detail) for kind, detail in problems)
        else:
            examples.append(ChatExample(tuple(msgs), line))
    if issues:
        issues.sort()
        raise DataValidationError(_error_message(source, issues, len(records)), issues)
    if not examples:
        raise DataValidationError(
            f"training data {source} holds no records; add at least one conversation"
        )
    return examples


def data_digest(examples: Iterable[ChatExample]) -> str:
    """``sha256:<hex>`` over the normalised conversations (roles and contents only, in order)."""
    h = hashlib.sha256(b"loraroute-chat-data-v1\n")
    for ex in examples:
        h.update(json.dumps(ex.as_dicts(), ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def routing_examples(
    examples: Iterable[ChatExample], *, limit: int = 64, seed: int = 0
) -> list[str]:
    """A de-duplicated, deterministic sample of first user turns (in data order)."""
    seen: dict[str, None] = {}
    for ex in examples:
        turn = ex.first_user_turn()
        if turn is not None and turn.strip():
            seen.setdefault(turn.strip(), None)
    unique = list(seen)
    if len(unique) <= limit:
        return unique
    keep = set(random.Random(seed).sample(range(len(unique)), limit))
    return [t for i, t in enumerate(unique) if i in keep]


def issue_counts(issues: list[tuple[int, str, str]]) -> dict[str, int]:
    return dict(Counter(kind for _, kind, _ in issues))
