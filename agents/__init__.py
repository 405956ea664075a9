"""loraroute.agents: the runtime that serves adapters on one shared base model, and its
LangChain face.

Subpackages, lowest first: :mod:`.lora` (the LoRA layer, slots and kernels), :mod:`.runtime`
(the engine), :mod:`.training` and :mod:`.evaluation`, :mod:`.server` (the OpenAI-compatible
server), :mod:`.demo`, and :mod:`.cli` (the ``adapters`` commands). The LangChain chat model
(:mod:`.chat_model`, :mod:`.tools`) and the errors stay at the top.

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
    from .runtime import (
        AdapterPool,
        Engine,
        EngineConfig,
        Generation,
        RequestHandle,
        ResidentAdapter,
        SamplingParams,
    )
    from .training import TrainConfig, TrainResult, read_training_record, train_adapter

_LAZY = {
    "ChatLoraRoute": ".chat_model",
    "shared_engine": ".chat_model",
    "Engine": ".runtime",
    "EngineConfig": ".runtime",
    "AdapterPool": ".runtime",
    "ResidentAdapter": ".runtime",
    "Generation": ".runtime",
    "RequestHandle": ".runtime",
    "SamplingParams": ".runtime",
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
    "EngineConfig",
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
