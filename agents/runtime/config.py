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

    ``kv_cache``: ``"paged"`` (a paged KV cache of ``kv_block_size``-token blocks, prompts
    prefilled in chunks of at most ``max_step_tokens`` inside decode steps, admission by free
    blocks, prefix reuse when ``prefix_caching``), ``"dense"`` (each prompt prefilled alone,
    rows merged by left padding) or ``"auto"``: paged for Llama-family models (Llama,
    Mistral, Qwen2; faster on CPU too: benchmarks/results/runtime.md), dense for the rest.
    ``kv_cache_tokens`` sizes the paged cache (default: ``max_batch_size`` sequences of the
    full context, at most ``kv_memory_fraction`` of the free GPU memory).

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
    adapter_weights: Literal["model", "int8"] = Field(
        "model",
        description="adapters in device slots: the model's dtype, or int8 with a scale per "
        "rank (half the memory and half the bytes a decode step reads; Triton backend only)",
    )
    cuda_graphs: bool = True
    kv_cache: Literal["auto", "paged", "dense"] = "auto"
    kv_block_size: int = Field(16, ge=1, description="tokens per paged KV block")
    kv_cache_tokens: int | None = Field(None, ge=1, description="tokens the paged cache holds")
    kv_memory_fraction: float = Field(0.9, gt=0, le=1, description="of free GPU memory, at most")
    max_step_tokens: int | None = Field(
        None, ge=1, description="tokens a paged step feeds; default 2048 on CUDA, 512 elsewhere"
    )
    prefix_caching: bool = True

    def merged(self, **options: Any) -> EngineConfig:
        """A copy with ``options`` (validated) over this config's values."""
        if not options:
            return self
        return EngineConfig(**{**self.model_dump(), **options})
