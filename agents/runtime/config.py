"""Every option of an :class:`~.engine.Engine`, in one validated object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """How an engine holds its base model and adapters.

    ``max_resident`` adapters sit in device slots and ``max_cpu_adapters`` more (default: four
    times as many on CUDA, none on CPU) wait in the CPU tier as pinned host copies.
    ``lora_backend`` picks the mixed-adapter LoRA path (``"triton"``, ``"torch"`` or
    ``"auto"``: Triton on CUDA when installed). ``cuda_graphs``: on CUDA, decode steps run over
    static KV buffers and are replayed as CUDA graphs (no effect on CPU).

    Example::

        >>> EngineConfig(max_resident=4).max_batch_size
        8
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    device: str | None = Field(None, description="torch device; default: the settings' device")
    dtype: Any = Field(None, description="torch dtype; default: bf16 on CUDA, fp32 elsewhere")
    max_resident: int = Field(16, ge=1, description="adapters in device slots")
    max_bytes: int | None = Field(None, ge=1, description="bytes of adapters in device slots")
    max_batch_size: int = Field(8, ge=1, description="rows decoded together")
    r_max: int = Field(16, ge=1, description="the slot layout's rank to start with")
    max_cpu_adapters: int | None = Field(None, ge=0, description="adapters in the CPU tier")
    max_cpu_bytes: int | None = Field(None, ge=1, description="bytes of the CPU tier")
    lora_backend: Literal["auto", "triton", "torch"] = "auto"
    cuda_graphs: bool = True

    def merged(self, **options: Any) -> EngineConfig:
        """A copy with ``options`` (validated) over this config's values."""
        if not options:
            return self
        return EngineConfig(**{**self.model_dump(), **options})
