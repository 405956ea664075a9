"""loraroute.agents: the runtime that serves adapters on one shared base model, and its
LangChain face.

Importing this package is cheap: torch, transformers and LangChain load when a name that
needs them is first used.

Example::

    >>> from loraroute.agents import ChatLoraRoute
    >>> chat = ChatLoraRoute(model="auto")  # routes each call; nothing is loaded yet
    >>> chat.invoke("How long do I boil an egg?").response_metadata["adapter"]  # doctest: +SKIP
    'cooking:prod'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AgentError,
    ContextLengthError,
    DataValidationError,
    EmptyConversationError,
    EngineClosedError,
    IncompatibleAdapterError,
    PoolFullError,
    RequestCancelledError,
    ToolSchemaError,
    TrainingError,
    UnknownAdapterError,
)

if TYPE_CHECKING:
    from .chat_model import ChatLoraRoute, shared_engine
    from .engine import Engine
    from .pool import AdapterPool, ResidentAdapter
    from .requests import Generation, RequestHandle, SamplingParams
    from .training import TrainConfig, TrainResult, read_training_record, train_adapter

_LAZY = {
    "ChatLoraRoute": ".chat_model",
    "shared_engine": ".chat_model",
    "Engine": ".engine",
    "AdapterPool": ".pool",
    "ResidentAdapter": ".pool",
    "Generation": ".requests",
    "RequestHandle": ".requests",
    "SamplingParams": ".requests",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "read_training_record": ".training",
    "train_adapter": ".training",
}

__all__ = [
    "AdapterPool",
    "AgentError",
    "ChatLoraRoute",
    "ContextLengthError",
    "DataValidationError",
    "EmptyConversationError",
    "Engine",
    "EngineClosedError",
    "Generation",
    "IncompatibleAdapterError",
    "PoolFullError",
    "RequestCancelledError",
    "RequestHandle",
    "ResidentAdapter",
    "SamplingParams",
    "ToolSchemaError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "UnknownAdapterError",
    "read_training_record",
    "shared_engine",
    "train_adapter",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
