"""Labelled routing data: JSONL of ``{"text", "label"}`` or the domains' chat JSONL.

Chat lines (``{"messages": [...], "domain": ...}``) use their first user turn as the text and
``domain`` as the label. ``label`` null (or a missing label) means out of scope.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RouteDataError


def read_labelled(path: str | Path) -> tuple[list[str], list[str | None]]:
    """``(texts, labels)`` from one JSONL file or a folder of ``*.jsonl`` files."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise RouteDataError(f"routing data {str(path)!r} is not a JSONL file or a folder of them")
    texts: list[str] = []
    labels: list[str | None] = []
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RouteDataError(f"{file}:{n} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise RouteDataError(f"{file}:{n} is a {type(row).__name__}, expected an object")
            if "text" in row:
                text, label = row["text"], row.get("label")
            elif "messages" in row:
                users = [m.get("content", "") for m in row["messages"] if m.get("role") == "user"]
                if not users:
                    raise RouteDataError(f"{file}:{n} has messages but no user turn")
                text, label = users[0], row.get("domain", row.get("label"))
            else:
                raise RouteDataError(
                    f"{file}:{n} has neither 'text' nor 'messages'; expected "
                    f'{{"text": ..., "label": adapter-name-or-null}}'
                )
            if not isinstance(text, str):
                raise RouteDataError(
                    f"{file}:{n}: text must be a string, got {type(text).__name__}"
                )
            texts.append(text)
            labels.append(None if label in (None, "", "oos") else str(label))
    return texts, labels
