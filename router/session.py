"""A conversation's route kept between calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .decision import RouteDecision
from .router import Router


class RouteSession:
    """Keeps a conversation's previous route between calls.

    Example::

        >>> session = RouteSession(router)  # doctest: +SKIP
        >>> session.route("my contract has an indemnity clause").adapter  # doctest: +SKIP
        'legal'
        >>> session.route("and what does it cover?").adapter  # doctest: +SKIP
        'legal'
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self.messages: list[Any] = []
        self.last: RouteDecision | None = None

    def route(self, message: str | dict | Sequence[Any]) -> RouteDecision:
        """Add a user message (or messages) and decide for the conversation so far."""
        if isinstance(message, str):
            self.messages.append({"role": "user", "content": message})
        elif isinstance(message, dict):
            self.messages.append(message)
        else:
            self.messages.extend(message)
        prev = self.last.adapter if self.last is not None else None
        if self.last is None:
            self.last = self.router.route(self.messages)
        else:
            self.last = self.router.route(self.messages[-1:], previous=prev)
        return self.last

    def add_reply(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})
