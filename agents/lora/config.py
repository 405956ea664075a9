"""How the mixed-adapter LoRA runs: the backend and the CUDA kernels' options.

One :class:`LoraKernelConfig` belongs to each :class:`~loraroute.agents.lora.slots.SlotLayers`;
its layers, plan buffers and Triton launchers read it when they run, so a benchmark may change
a field on a live engine (the decode graphs are re-recorded on the next epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from loraroute.settings import Settings

Backend = Literal["auto", "triton", "torch"]
DecodeKernel = Literal["auto", "tiles", "rows"]
HintsAt = Literal["each", "attention"]


@dataclass
class LoraKernelConfig:
    """Options of the LoRA kernels; :meth:`from_settings` reads them from the environment.

    Example::

        >>> LoraKernelConfig(decode_kernel="rows").overlap
        True
    """

    # "auto" (Triton on CUDA when installed), "triton" or "torch" (gather + bmm)
    backend: Backend = "auto"
    # graphed decode: "tiles" (16 tokens of one adapter a tile), "rows" (one row a program) or
    # "auto" (rows once half the tile places would be padding; see layer.decode_kernel_for)
    decode_kernel: DecodeKernel = "auto"
    # graphed decode: the LoRA runs on a side stream beside the base GEMM
    overlap: bool = True
    # that stream's priority (below 0: its kernels take SMs ahead of the GEMM's next blocks)
    side_priority: int = -100
    # launch the GEMM before the side stream's kernels
    gemm_first: bool = False
    # the decode expand adds onto the GEMM's product instead of into a delta buffer
    expand_adds: bool = False
    # graphed decode on the paged engine: the delta buffer is added inside the fused op that
    # reads the GEMM's product next (norm, rotary, activation), not by an add of its own
    fused_adds: bool = True
    # graphed decode: SMs the base GEMM beside the side stream leaves free (cuBLASLt's SM count
    # target), so the LoRA kernels start at once instead of after the GEMM's blocks; 0: none.
    # 8 of an H100's 132: 1 adapter 0.959x -> 1.000x of base, 32 distinct 0.839x -> 0.849x
    # (benchmarks/results/gpu_decode_carveout_reps4.md)
    gemm_sm_carveout: int = 8
    # graphed decode: KiB of each batch adapter's slot past the current group that the group
    # hints into L2 (on a third stream, once its own LoRA kernels are issued), so the groups
    # after it read their A and B from L2 beside their GEMM; at least the next group whole;
    # 0: no hints. ``l2_evict_last``: at evict-last priority (the GEMMs' streamed weights
    # leave L2 first). Slower at every setting tried: 32 distinct adapters 0.834x of base ->
    # 0.77-0.81x on an H200 (benchmarks/results/gpu_decode_l2.md)
    l2_prefetch: int = 0
    l2_evict_last: bool = True
    # where the hints run: "each" group, once its LoRA kernels are issued (beside the GEMMs),
    # or only the groups that feed attention, after their GEMM ("attention": beside the
    # attention kernels). Not faster either: on an H100, 32 distinct 0.841x of base -> 0.850x
    # hinting the o group alone (noise), 0.79-0.81x with gate/up or the rest of the layer
    # (benchmarks/results/gpu_decode_l2_attention.md)
    l2_prefetch_at: HintsAt = "each"
    # call compiled Triton kernels directly (skipping kernel[grid]'s argument binding)
    fast_launch: bool = True
    # split-K slice width of the eager kernel's shrink (0: no split)
    k_per_split: int = 1024
    # Triton's CPU interpreter (TRITON_INTERPRET=1): kernels accept CPU tensors
    interpret: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, backend: Backend = "auto") -> LoraKernelConfig:
        return cls(
            backend=backend,
            decode_kernel=settings.lora_decode_kernel,
            overlap=settings.lora_overlap,
            side_priority=settings.lora_side_priority,
            gemm_first=settings.lora_gemm_first,
            expand_adds=settings.lora_expand_adds,
            fused_adds=settings.lora_fused_adds,
            gemm_sm_carveout=settings.lora_gemm_sm_carveout,
            l2_prefetch=settings.lora_l2_prefetch,
            l2_evict_last=settings.lora_l2_evict_last,
            l2_prefetch_at=settings.lora_l2_prefetch_at,
            fast_launch=settings.triton_fast_launch,
            k_per_split=settings.triton_k_per_split,
            interpret=settings.triton_interpret,
        )
