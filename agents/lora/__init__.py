"""The LoRA machinery: many adapters in one slot stack, each batch row wearing its own.

- :mod:`.weights`: reading a PEFT LoRA folder, checking it fits the base;
- :mod:`.layout`: where each module's matrices live inside a slot;
- :mod:`.plan`: the adapter choice of a forward (slots per row, tiles, graph buffers);
- :mod:`.layer`: the wrapped linear layers and their groups;
- :mod:`.slots`: the slot stack and loading adapters into it;
- :mod:`.kernels` / :mod:`.launchers`: the Triton kernels and their launchers;
- :mod:`.config`: the kernels' options.

Nothing here knows of the engine, the server or LangChain.
"""

from __future__ import annotations

from .config import LoraKernelConfig
from .layer import LoraGroup, SlotLoraLinear, decode_kernel_for, take_delta
from .layout import PackedAdapter, SlotLayout
from .plan import TILE_M, AdapterContext, ForwardPlan, StaticPlanBuffers, tile_lists
from .slots import SlotLayers, resolve_backend
from .weights import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterWeights,
    check_compatible,
    folder_digest,
    read_adapter,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "TILE_M",
    "AdapterContext",
    "AdapterWeights",
    "ForwardPlan",
    "LoraGroup",
    "LoraKernelConfig",
    "PackedAdapter",
    "SlotLayers",
    "SlotLayout",
    "SlotLoraLinear",
    "StaticPlanBuffers",
    "check_compatible",
    "decode_kernel_for",
    "folder_digest",
    "read_adapter",
    "resolve_backend",
    "take_delta",
    "tile_lists",
]
