"""Errors of the agents runtime: one base class, specific subclasses that also inherit built-ins."""

from __future__ import annotations

from loraroute.errors import LoraRouteError


class AgentError(LoraRouteError):
    """Base class of every error raised by ``loraroute.agents``."""


class IncompatibleAdapterError(AgentError, ValueError):
    """An adapter does not fit the loaded base model (fingerprint, target modules or shapes)."""


class UnknownAdapterError(AgentError, KeyError):
    """An adapter reference names nothing the engine (or its registry) knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PoolFullError(AgentError, RuntimeError):
    """Every resident adapter slot is pinned or in use, so nothing can be evicted."""


class ContextLengthError(AgentError, ValueError):
    """A request does not fit the base model's context window even after dropping old turns."""


class EmptyConversationError(AgentError, ValueError):
    """A request carried no messages."""


class RequestCancelledError(AgentError, RuntimeError):
    """The request was cancelled before it finished."""


class EngineClosedError(AgentError, RuntimeError):
    """The engine was closed; no more requests are accepted."""


class ToolSchemaError(AgentError, ValueError):
    """A tool or output schema cannot be compiled into a generation constraint."""


class TrainingError(AgentError, RuntimeError):
    """Training could not start or finish (bad configuration, no usable examples, no checkpoint)."""


class DataValidationError(AgentError, ValueError):
    """Training data is malformed; ``issues`` lists ``(line, kind, detail)`` for each problem."""

    def __init__(self, message: str, issues: list[tuple[int, str, str]] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or []
