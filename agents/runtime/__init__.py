"""The runtime: one base model, a pool of resident adapters, batched generation.

- :mod:`.engine`: :class:`Engine`, the public face (adapters in and out, generate, stream);
- :mod:`.config`: :class:`EngineConfig`, every engine option in one object;
- :mod:`.scheduler`: the continuous batch (prefill, decode steps, stop conditions);
- :mod:`.static_decode`: decode steps over static KV buffers, replayed as CUDA graphs;
- :mod:`.pool`: which adapters sit in device slots and in the CPU tier;
- :mod:`.requests`: sampling parameters, request handles, results;
- :mod:`.prompts`: messages to prompt token ids;
- :mod:`.constrained`: grammar-constrained decoding (JSON schemas, tool calls).
"""

from __future__ import annotations

from .config import EngineConfig
from .engine import BASE_REFS, Engine
from .pool import AdapterPool, ResidentAdapter
from .requests import Generation, RequestHandle, SamplingParams

__all__ = [
    "BASE_REFS",
    "AdapterPool",
    "Engine",
    "EngineConfig",
    "Generation",
    "RequestHandle",
    "ResidentAdapter",
    "SamplingParams",
]
